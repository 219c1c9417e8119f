"""oneformore.continual"""

from .collector import ActivationCollector  # noqa: F401
from .iterative_svd import IterativeSVD, LayerSpectrum  # noqa: F401
from .projector import GradientProjector  # noqa: F401
