"""Scanning folders of images: which files count, and errors that say what layout was expected."""

from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

MVTEC_LAYOUT = """expected layout (MVTec AD):
  <root>/<category>/train/good/*.png
  <root>/<category>/test/good/*.png
  <root>/<category>/test/<defect>/*.png
  <root>/<category>/ground_truth/<defect>/<name>_mask.png   (one mask per defective test image)"""

VISA_LAYOUT = """expected layout (VisA, as downloaded):
  <root>/split_csv/1cls.csv                         (columns object,split,label,image,mask)
  <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
  <root>/<category>/Data/Masks/Anomaly/*.png         (paths in the csv are relative to <root>)"""


class DatasetLayoutError(FileNotFoundError):
    """A folder or file the dataset layout requires is missing; the message names it and the expected layout."""


class UnreadableImageError(OSError):
    """An image file exists but cannot be decoded; the message names the file."""


def is_image_file(path: Path) -> bool:
    """Visible regular files with an image extension (hidden files such as .DS_Store or ._x.png are ignored)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """The images of ``folder`` (not recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def list_subfolders(folder: Path) -> list[Path]:
    """Visible subfolders, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_dir(path: Path, layout: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"missing folder: {path}\n{layout}")
    return path
