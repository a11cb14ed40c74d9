"""Training loop for tokenizers."""

from mvq.train.loop import TrainResult, build_data, train, validate

__all__ = ["TrainResult", "build_data", "train", "validate"]
