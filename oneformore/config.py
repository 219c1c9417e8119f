"""YAML run configurations: the packaged presets (``oneformore/configs/<name>.yaml``: ``tiny``, ``base``) or a
file, with dotted ``key=value`` overrides (values parsed as YAML, so ``train.lr=1e-4`` gives a float and
``unet.channel_mult=[1,2]`` a list). Unknown keys are rejected so a typo never goes unnoticed."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Iterable

import yaml


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("oneformore").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def _read(name_or_path: str | Path) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"config: no file at {path}")
        text = path.read_text()
    else:
        entry = resources.files("oneformore").joinpath("configs", f"{name_or_path}.yaml")
        if not entry.is_file():
            raise ValueError(f"config: unknown preset {str(name_or_path)!r}; expected one of {preset_names()} or a .yaml path")
        text = entry.read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config {name_or_path}: expected a mapping at the top level")
    return data


def parse_value(raw: str):
    """YAML parsing, plus floats like ``1e-3`` that YAML 1.1 leaves as strings."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(config: dict, overrides: Iterable[str]) -> dict:
    """A copy of ``config`` with each ``a.b.c=value`` applied; the key path must already exist."""
    config = copy.deepcopy(config)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected KEY=VALUE with a dotted KEY (e.g. train.lr=1e-4)")
        key, raw = item.split("=", 1)
        node = config
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join(parts[:i]) or "the top level"
                options = sorted(node) if isinstance(node, dict) else []
                raise KeyError(f"override {item!r}: no key {part!r} under {where}; expected one of {options}")
            if i == len(parts) - 1:
                node[part] = parse_value(raw)
            else:
                node = node[part]
    return config


def load_config(name_or_path: str | Path = "tiny", overrides: Iterable[str] = ()) -> dict:
    """The resolved configuration: a preset name or a YAML path, then the overrides in order."""
    return apply_overrides(_read(name_or_path), overrides)
