"""oneformore.continual"""

from .projector import GradientProjector  # noqa: F401
