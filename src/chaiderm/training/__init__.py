"""Training: the loop, its loss terms, checkpoints and resume."""

from chaiderm.training.loop import TrainResult, train
from chaiderm.training.terms import Batch, LossTerm

__all__ = ["Batch", "LossTerm", "TrainResult", "train"]
