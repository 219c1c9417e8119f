"""oneformore.data: MVTec AD, VisA and MVTec-like folders as datasets of sample dicts, joint transforms, and
continual protocols."""

from .base import AnomalyDataset, SampleRecord
from .cache import CachedDataset
from .folder import MVTEC_CATEGORIES, Folder, MVTecAD
from .layout import DatasetLayoutError, UnreadableImageError
from .loader import SkippingLoader, anomaly_loader
from .protocols import PRESETS, Protocol, get_protocol, parse_protocol
from .transforms import NORMALISATIONS, AnomalyTransform
from .visa import VISA_CATEGORIES, VisA

__all__ = [
    "AnomalyDataset",
    "AnomalyTransform",
    "CachedDataset",
    "DatasetLayoutError",
    "Folder",
    "MVTEC_CATEGORIES",
    "MVTecAD",
    "NORMALISATIONS",
    "PRESETS",
    "Protocol",
    "SampleRecord",
    "SkippingLoader",
    "UnreadableImageError",
    "VISA_CATEGORIES",
    "VisA",
    "anomaly_loader",
    "get_protocol",
    "parse_protocol",
]
