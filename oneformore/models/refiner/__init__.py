"""The multi-class diffusion-transformer refiner (diffusion refinement with dual conditioning).

- :mod:`.features`: frozen backbone levels aligned to one token grid (UniAD) and standardised;
- :mod:`.tokens`: training masks and the complementary test-time partitions;
- :mod:`.transformer`: the masked-token inpainting transformer (the coarse reconstruction);
- :mod:`.denoiser`: the diffusion refiner's ε-network (dual conditioning, spatio-temporal fusion);
- :mod:`.model`: :class:`RefinerDetector` (training loss, activation pass, scoring);
- :mod:`.build`: :func:`build_refiner` from a config.
"""

from .build import build_refiner
from .model import RefinerDetector

__all__ = ["RefinerDetector", "build_refiner"]
