"""Typed settings. Every trained model saves its ``RunConfig`` as ``config.json`` beside the weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from chaiderm.errors import DataError

Logic = Literal["disease", "joint", "hierarchical", "nonhierarchical", "classifier", "none"]
LOGICS: tuple[str, ...] = ("disease", "joint", "hierarchical", "nonhierarchical", "classifier")
DEFAULT_VIEWS = "none"  # test-time views of a new model (models.embedding.VIEWS)


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None  # user-supplied backbone weights (e.g. AlexNet), safetensors or .pt
    head: Literal["conv", "none"] = "conv"  # "none": embed the backbone's own map (Baseline)
    embedding_dim: int = 1024  # the paper's activation-map dimensionality
    normalize: bool = False  # L2-normalise the pooled vector? Raw won on ISIC val (docs/benchmarks.md)
    image_size: int = 224  # network input side (square centre crop / random crop)
    load_size: int = 256  # images are resized so the shorter side is this, then cropped
    freeze_stages: int | None = None  # leading backbone stages kept frozen; None: the backbone's default
    n_classes: int = 0  # >0 adds a classifier head (BaselineFT)
    # test-time views averaged into one embedding (models.embedding.VIEWS): "none", "flip", "flip4".
    # An inference setting: indexes record the views they were built with and queries follow the index;
    # training's per-epoch validation always embeds single views.
    views: str = DEFAULT_VIEWS
    # colour normalisation of every input, in training and inference (data.transforms.COLOURS):
    # "none" or "shades_of_gray" (colour constancy, p = 6)
    colour: str = "none"
    # how convolutions pad (models.registry.PADDINGS). "replicate" repeats edge pixels: the maps carry no
    # frame from the padding and a uniform image has a flat map. "zeros" (the ImageNet weights' own) stays
    # the default: on ISIC it scores 0.07 higher validation AUC@20 and locates ham10000_dev lesions
    # better (research/maps/map_localisation_round1.json)
    padding: str = "zeros"
    # 32: the backbone's own final map; 16: its last downsampling removed, maps of twice the resolution
    map_stride: int = 32
    # "border": each channel's mean over the map's outer ring of cells (the skin around a centred lesion)
    # is subtracted before ReLU and pooling, so the embedding and its maps describe the lesion against
    # its own skin; "none": the paper's maps
    map_background: str = "none"
    # how the k nearest cases vote (index.knn.VOTES): "uniform" (one vote each) or "distance" (each weighed
    # by 1 / squared distance; better in 5 of 5 cross-validation folds, research/recipe_rounds/cv_round8.json).
    # An inference setting: query,
    # serve and evaluate follow the model's.
    vote: str = "uniform"
    # backbone "ensemble" (models.ensemble): each member's own ModelConfig, as a dict
    members: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainConfig:
    logic: str = "disease"
    epochs: int = 3
    batch_size: int = 48
    m_per_class: int = 4  # images per (disease or group) label in a mined batch
    protocol: Literal["mined", "random"] = "mined"  # random: the paper's N random triplets per epoch
    triplets_per_epoch: int = 150_000
    margin: float = 1.0
    reduction: Literal["mean", "nonzero_mean"] = "nonzero_mean"
    optimizer: Literal["adam", "sgd"] = "adam"
    lr_backbone: float = 1e-4  # transferred layers
    lr_head: float = 1e-3  # new layers
    momentum: float = 0.9
    lr_step: int = 0  # "step" policy: decay every lr_step epochs (0 = constant)
    lr_gamma: float = 0.1
    chunk_size: int = 16  # images per forward chunk (faster on CPU than one big batch)
    seed: int = 0
    val_k: int = 10
    select_metric: Literal["auc", "loss", "last"] = "auc"
    positive_class: str = "melanoma"
    feedback_weight: float = 1.0
    # weight of the lesion-mask term (training.loop._mask_loss), used when mask data is given; 3 locates
    # held-out lesions better than 1 (research/maps/map_localisation_round5.json, _round6.json)
    mask_weight: float = 3.0
    # what the mask term asks of a map: 2 * ((1 - s) * (1 - mass in lesion) + s * (1 - soft Dice)). Mass
    # alone rewards a peak inside the lesion, which the 0.5-threshold Jaccard scores low; Dice alone, a map
    # that spreads past the lesion's edge (research/maps/maps.md)
    mask_dice_share: float = 0.5
    # >0: validate and save an exponential moving average of the weights (per step) instead of the
    # raw weights; smooths the step-to-step drift of short, noisy fine-tuning runs
    ema_decay: float = 0.0
    # >0: random brightness / contrast / saturation factors in [1 - x, 1 + x] on training inputs
    colour_jitter: float = 0.0
    # >1: training crops as small as image_size / zoom pixels, enlarged (1: 0.8-1 of the side, never enlarged)
    zoom: float = 1.0
    # >0, triplet logics: a diagnosis classifier on the embedding, its cross-entropy added with this weight
    # (the embedding also learns to separate diagnoses linearly; the head is never used to vote). Off by
    # default: weight 1 scores no better than another training seed (research/recipe_rounds/cv_round13.json)
    ce_weight: float = 0.0
    recipe: str = ""  # the named recipe (training.recipes) that fixed some of these settings, if any


@dataclass
class DataConfig:
    train: str = ""
    extra: list[str] = field(default_factory=list)  # more training sources, their rows after train's
    val: str | None = None
    train_split: str | None = None
    val_split: str | None = None
    groups: str | None = None
    init: str | None = None  # run folder the weights were fine-tuned from
    feedback: str | None = None
    masks: str | None = None  # images with lesion masks that taught the maps where lesions are
    train_fingerprint: str = ""  # hash of (image id, diagnosis, group) rows, to trace a result to its data
    n_train: int = 0
    n_val: int = 0
    diagnoses: dict[str, int] = field(default_factory=dict)  # training rows per canonical diagnosis
    vocabulary: str = ""  # data.diagnoses.VOCABULARY the labels were read with ("" before it existed)
    members: list[str] | None = None  # an ensemble's member run folders, as they were combined


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        from chaiderm._io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> RunConfig:
        model = dict(d.get("model", {}))
        model.setdefault("views", "none")  # configs from before the setting embedded single views
        model.setdefault("padding", "zeros")  # ... and padded with zeros
        model.setdefault("map_stride", 32)
        model.setdefault("map_background", "none")
        return cls(
            model=_build(ModelConfig, model, f"{source}: model"),
            train=_build(TrainConfig, d.get("train", {}), f"{source}: train"),
            data=_build(DataConfig, d.get("data", {}), f"{source}: data"),
            version=str(d.get("version", "")),
        )

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(path, "config file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(path, f"not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))


def _build(kind: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise DataError(None, f"{where}: unknown field(s) {sorted(unknown)}")
    return kind(**values)
