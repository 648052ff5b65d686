"""Models: a registry of backbones and the GAP embedding network on top."""

from chaiderm.models.embedding import EmbeddingNet, build_model, load_model, save_model
from chaiderm.models.registry import Backbone, create_backbone, list_backbones, register_backbone

__all__ = [
    "Backbone",
    "EmbeddingNet",
    "build_model",
    "create_backbone",
    "list_backbones",
    "load_model",
    "register_backbone",
    "save_model",
]
