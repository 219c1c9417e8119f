"""Arguments shared by the run verbs: data, tasks, config overrides, device."""

from __future__ import annotations

import argparse

from ..data.protocols import PRESETS
from ..data.source import KINDS, DataSource


def add_data_args(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    p.add_argument("--data", metavar="ROOT", required=required,
                   help="dataset folder: MVTec AD, VisA, or your own MVTec-like folder (default: built-in procedural data)")
    p.add_argument("--kind", choices=KINDS, default="auto", help="how to read --data (default: recognised)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning instead of stopping")
    p.add_argument("--cache", action="store_true",
                   help="keep decoded images in memory after their first load (about 260 KB per image at 128 px)")


def data_source(args: argparse.Namespace, image_size: int) -> DataSource:
    """The DataSource that the arguments of :func:`add_data_args` describe."""
    return DataSource(args.data, args.kind, image_size, skip_bad=args.skip_bad, cache=args.cache)


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_task_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--protocol", help=f"a preset ({', '.join(sorted(PRESETS))})")
    group.add_argument("--categories", help='a custom sequence: tasks separated by ";", categories by ","'
                                            ' (e.g. "bottle,magnetic_tile;kolektor")')


def parse_categories(text: str) -> list[list[str]]:
    tasks = [[c.strip() for c in task.split(",") if c.strip()] for task in text.split(";")]
    tasks = [t for t in tasks if t]
    if not tasks:
        raise SystemExit(f"--categories: expected e.g. 'bottle,cable;screw', got {text!r}")
    return tasks


def tasks_from_args(args, data) -> list[list[str]] | str:
    if args.protocol:
        return args.protocol
    if args.categories:
        return parse_categories(args.categories)
    return [[c] for c in data.categories()]  # default: every category of the data, one task each
