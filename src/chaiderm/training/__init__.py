"""Training: the loop, checkpoints and resume."""

from chaiderm.training.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
