"""oneformore.train: the training loop shared by both detectors."""

from .trainer import Trainer, TrainerConfig, atomic_save, load_checkpoint

__all__ = ["Trainer", "TrainerConfig", "atomic_save", "load_checkpoint"]
