"""A built-in procedural anomaly-detection dataset: textured "products" with synthetic defects and their masks.

It lets the demo and the tests run on a fresh machine with nothing downloaded. Every sample is a pure function of
(seed, category, split, index): regenerating gives bit-identical images, on any machine.

Categories (normal appearance varies in phase, orientation, colour and position from sample to sample):

- ``stripes``: periodic sinusoidal stripes (a woven or brushed surface);
- ``weave``: two crossed stripe families (fabric / grid);
- ``marble``: smooth multi-octave value noise with veins (leather, stone);
- ``disc``: an object, a shaded disc with a concentric ring on a plain background (a cap seen from above);
- ``tile``: an object, a rounded square plate with a bevelled rim on a textured background.

Defects (test split only, each with its pixel mask): ``scratch`` (a thin curved line of contrasting brightness),
``hole`` (a dark ellipse with a light rim), ``stain`` (a soft-edged colour blob; the mask is where its opacity
exceeds 0.5). On object categories defects are placed on the object.

Samples follow the package's dataset format: a dict with "image" float32 [3, H, W] normalised with the ImageNet
mean/std (``normalize="imagenet"``, what :func:`oneformore.models.backbone.load_backbone` expects by default) or in
[0, 1] (``normalize="unit"``), "mask" float32 [1, H, W] in {0, 1}, "label" int (0 normal, 1 anomalous),
"category", "defect" ("good" for normal) and "path" (``procedural://<category>/<split>/<defect>/<index>``).
"""

from __future__ import annotations

import math
import zlib

import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from oneformore.models.backbone import imagenet_normalise

CATEGORIES = ("stripes", "weave", "marble", "disc", "tile")
DEFECTS = ("scratch", "hole", "stain")
OBJECT_CATEGORIES = ("disc", "tile")


def _generator(*parts) -> torch.Generator:
    """A generator seeded by a stable hash of ``parts`` (Python's hash() is salted per process)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))


def _u(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    return torch.meshgrid(coords, coords, indexing="ij")  # y, x in (0, 1)


def _value_noise(size: int, g: torch.Generator, octaves: int = 4, base: int = 4) -> torch.Tensor:
    """Smooth noise in about [0, 1]: bicubic-upsampled random grids at doubling frequencies, halving amplitudes."""
    total = torch.zeros(size, size)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = torch.rand(1, 1, cells + 1, cells + 1, generator=g)
        total += amp * F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)[0, 0]
        norm += amp
        amp /= 2
    return (total / norm).clamp(0, 1)


def _palette(g: torch.Generator, base: tuple[float, float, float], jitter: float = 0.06) -> torch.Tensor:
    return (torch.tensor(base) + jitter * (torch.rand(3, generator=g) * 2 - 1)).clamp(0, 1)


def _colourise(shade: torch.Tensor, dark: torch.Tensor, light: torch.Tensor) -> torch.Tensor:
    return dark[:, None, None] + (light - dark)[:, None, None] * shade[None]


def _texture(category: str, size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(image [3, H, W] in [0, 1], region [H, W] where defects may go)."""
    y, x = _grid(size)
    region = torch.ones(size, size)
    if category == "stripes":
        angle, period, phase = _u(g, 0.2, 0.5), _u(g, 0.07, 0.09), _u(g, 0, 2 * math.pi)
        u = x * math.cos(angle) + y * math.sin(angle)
        shade = 0.5 + 0.5 * torch.sin(2 * math.pi * u / period + phase)
        shade = 0.85 * shade + 0.15 * _value_noise(size, g, 3, 8)
        img = _colourise(shade, _palette(g, (0.25, 0.3, 0.45)), _palette(g, (0.7, 0.75, 0.85)))
    elif category == "weave":
        period, phase = _u(g, 0.09, 0.11), _u(g, 0, 2 * math.pi)
        a = 0.5 + 0.5 * torch.sin(2 * math.pi * x / period + phase)
        b = 0.5 + 0.5 * torch.sin(2 * math.pi * y / period + phase / 2)
        shade = 0.45 * a + 0.45 * b + 0.1 * _value_noise(size, g, 2, 16)
        img = _colourise(shade, _palette(g, (0.45, 0.3, 0.15)), _palette(g, (0.9, 0.8, 0.55)))
    elif category == "marble":
        noise = _value_noise(size, g, 5, 3)
        veins = (torch.sin(2 * math.pi * (x * _u(g, 1.5, 2.5) + 4 * noise)) * 0.5 + 0.5) ** 6
        shade = 0.7 * noise + 0.3 * (1 - veins)
        img = _colourise(shade, _palette(g, (0.35, 0.35, 0.35)), _palette(g, (0.92, 0.9, 0.88)))
    elif category == "disc":
        cy, cx, r = _u(g, 0.45, 0.55), _u(g, 0.45, 0.55), _u(g, 0.33, 0.38)
        d = torch.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        disc = torch.sigmoid((r - d) * size / 1.5)
        ring = torch.exp(-(((d - 0.6 * r) / 0.025) ** 2))
        light = 0.5 + 0.5 * (1 - d / r).clamp(0, 1)
        shade = disc * (0.55 * light + 0.25 * ring + 0.2 * _value_noise(size, g, 2, 8))
        img = _colourise(shade, _palette(g, (0.08, 0.08, 0.1)), _palette(g, (0.85, 0.75, 0.6)))
        region = (d < 0.85 * r).float()
    elif category == "tile":
        cy, cx, half = _u(g, 0.47, 0.53), _u(g, 0.47, 0.53), _u(g, 0.3, 0.34)
        box = torch.maximum((y - cy).abs(), (x - cx).abs())
        plate = torch.sigmoid((half - box) * size / 1.5)
        rim = torch.exp(-(((half - box) / 0.03) ** 2))
        background = 0.3 * _value_noise(size, g, 3, 6)
        shade = background * (1 - plate) + plate * (0.75 - 0.3 * rim + 0.1 * _value_noise(size, g, 2, 4))
        img = _colourise(shade, _palette(g, (0.1, 0.12, 0.1)), _palette(g, (0.7, 0.8, 0.75)))
        region = (box < 0.8 * half).float()
    else:
        raise ValueError(f"category: expected one of {CATEGORIES}, got {category!r}")
    return img.clamp(0, 1), region


def _pick_centre(region: torch.Tensor, g: torch.Generator) -> tuple[float, float]:
    ys, xs = torch.nonzero(region > 0, as_tuple=True)
    i = int(torch.randint(len(ys), (1,), generator=g))
    size = region.shape[0]
    return (float(ys[i]) + 0.5) / size, (float(xs[i]) + 0.5) / size


def draw_defect(img: torch.Tensor, kind: str, generator: torch.Generator,
                region: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(img [3, H, W] in [0, 1] with one synthetic ``kind`` defect drawn on it, mask [H, W] in {0, 1}): the
    dataset's defects, for any image (also to make synthetic anomalies in training). The defect is centred on a
    random pixel of ``region`` ([H, W], nonzero where allowed; default: anywhere). A non-square image is padded to
    a square for the drawing, so a defect has the same size relative to the longer side."""
    if kind not in DEFECTS:
        raise ValueError(f"kind: expected one of {DEFECTS}, got {kind!r}")
    if img.dim() != 3 or img.shape[0] != 3:
        raise ValueError(f"img: expected shape [3, H, W], got {tuple(img.shape)}")
    h, w = img.shape[-2:]
    region = torch.ones(h, w) if region is None else region
    if region.shape != (h, w) or not bool((region > 0).any()):
        raise ValueError(f"region: expected a [{h}, {w}] map with at least one nonzero pixel, "
                         f"got {tuple(region.shape)}")
    size = max(h, w)
    square = F.pad(img, (0, size - w, 0, size - h))
    allowed = F.pad(region.float(), (0, size - w, 0, size - h))
    out, mask = _defect(square, allowed, kind, generator)
    return out[:, :h, :w], mask[:h, :w]


def _defect(img: torch.Tensor, region: torch.Tensor, kind: str, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(defective image, mask [H, W] in {0, 1}) of a square image."""
    size = img.shape[-1]
    y, x = _grid(size)
    cy, cx = _pick_centre(region, g)
    if kind == "scratch":
        length, angle, bend = _u(g, 0.2, 0.35), _u(g, 0, math.pi), _u(g, -2.0, 2.0)
        t = torch.linspace(-0.5, 0.5, 200)
        py = cy + length * t * math.sin(angle) + bend * 0.05 * (t**2 - 0.25) * math.cos(angle)
        px = cx + length * t * math.cos(angle) - bend * 0.05 * (t**2 - 0.25) * math.sin(angle)
        pts = torch.stack([py, px], 1)
        dist = torch.cdist(torch.stack([y.flatten(), x.flatten()], 1), pts).amin(1).view(size, size)
        width = _u(g, 1.2, 2.0) / size
        alpha = torch.sigmoid((width - dist) * size * 2)
        mean = float(img.mean())
        colour = torch.full((3,), 0.95 if mean < 0.5 else 0.05)
        out = img * (1 - alpha) + colour[:, None, None] * alpha
        mask = (dist <= width).float()
    elif kind == "hole":
        ry, rx, rot = _u(g, 0.035, 0.07), _u(g, 0.035, 0.07), _u(g, 0, math.pi)
        dy, dx = y - cy, x - cx
        u = dx * math.cos(rot) + dy * math.sin(rot)
        v = -dx * math.sin(rot) + dy * math.cos(rot)
        r = torch.sqrt((u / rx) ** 2 + (v / ry) ** 2)
        inside = torch.sigmoid((1 - r) * 20)
        rim = torch.exp(-(((r - 1.1) / 0.1) ** 2))
        out = img * (1 - inside) + 0.03 * inside
        out = out * (1 - 0.5 * rim) + 0.5 * rim * 0.9
        mask = (r <= 1.2).float()
    elif kind == "stain":
        radius = _u(g, 0.06, 0.11)
        d = torch.sqrt((y - cy) ** 2 + (x - cx) ** 2)
        wobble = 0.35 * (_value_noise(size, g, 2, 6) - 0.5)
        alpha = torch.sigmoid((radius * (1 + wobble) - d) * size / 3) * _u(g, 0.75, 0.95)
        colour = torch.tensor([_u(g, 0.4, 0.7), _u(g, 0.15, 0.35), _u(g, 0.0, 0.15)])
        out = img * (1 - alpha) + colour[:, None, None] * alpha
        mask = (alpha > 0.5).float()
    else:
        raise ValueError(f"defect: expected one of {DEFECTS}, got {kind!r}")
    return out.clamp(0, 1), mask


class ProceduralDataset(Dataset):
    """One category of the procedural dataset.

    ``split="train"``: ``n_train`` normal samples. ``split="test"``: ``n_test_good`` normal samples, then
    ``n_test_defect`` samples of each defect in :data:`DEFECTS` order. With ``cache`` (default) each sample is
    rendered once and kept in memory (about 0.2 MB per 128 px sample): epochs after the first cost nothing."""

    def __init__(
        self,
        category: str,
        split: str = "train",
        image_size: int = 128,
        seed: int = 0,
        n_train: int = 64,
        n_test_good: int = 16,
        n_test_defect: int = 8,
        normalize: str = "imagenet",
        cache: bool = True,
    ):
        if category not in CATEGORIES:
            raise ValueError(f"category: expected one of {CATEGORIES}, got {category!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        if normalize not in ("imagenet", "unit"):
            raise ValueError(f"normalize: expected 'imagenet' or 'unit', got {normalize!r}")
        if image_size < 32:
            raise ValueError(f"image_size: expected >= 32, got {image_size}")
        self.category, self.split, self.image_size, self.seed = category, split, image_size, seed
        self.normalize = normalize
        self._cache: dict[int, dict] | None = {} if cache else None
        if split == "train":
            self.items = [("good", i) for i in range(n_train)]
        else:
            self.items = [("good", i) for i in range(n_test_good)]
            self.items += [(d, i) for d in DEFECTS for i in range(n_test_defect)]

    def __len__(self) -> int:
        return len(self.items)

    def render(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(image [3, H, W] in [0, 1], mask [1, H, W], defect) of sample ``index``."""
        defect, i = self.items[index]
        # Normal appearance depends on (split, defect, i); a test defect is drawn on its own normal sample.
        g = _generator(self.seed, self.category, self.split, defect, i)
        img, region = _texture(self.category, self.image_size, g)
        mask = torch.zeros(self.image_size, self.image_size)
        if defect != "good":
            img, mask = _defect(img, region, defect, g)
        return img, mask[None], defect

    def __getitem__(self, index: int) -> dict:
        if self._cache is not None and index in self._cache:
            return dict(self._cache[index])
        sample = self._make(index)
        if self._cache is not None:
            self._cache[index] = sample
        return dict(sample)

    def _make(self, index: int) -> dict:
        img, mask, defect = self.render(index)
        if self.normalize == "imagenet":
            img = imagenet_normalise(img)
        _, i = self.items[index]
        return {
            "image": img.float().contiguous(),
            "mask": mask.float(),
            "label": int(defect != "good"),
            "category": self.category,
            "defect": defect,
            "path": f"procedural://{self.category}/{self.split}/{defect}/{i:03d}",
        }
