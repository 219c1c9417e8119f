"""Continual protocols: a sequence of tasks, each a list of categories; after task t the test set is every
category of tasks 0..t.

Presets follow One-for-More and IUF: categories in alphabetical order, the first N form the base task, the rest
come as the protocol says. "a-b" = a base task of a classes then one task of b classes; "a-1xk" = a base task then
k single-class tasks; "axk" = k tasks of a classes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from .folder import MVTEC_CATEGORIES
from .visa import VISA_CATEGORIES


@dataclass(frozen=True)
class Protocol:
    name: str
    tasks: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        if not self.tasks or any(not t for t in self.tasks):
            raise ValueError(f"protocol {self.name!r}: expected non-empty tasks, got {self.tasks}")
        seen = [c for t in self.tasks for c in t]
        dup = sorted({c for c in seen if seen.count(c) > 1})
        if dup:
            raise ValueError(f"protocol {self.name!r}: categories in more than one task: {dup}")

    def __len__(self) -> int:
        return len(self.tasks)

    def train_categories(self, task: int) -> list[str]:
        """Categories learned in ``task`` (0-based)."""
        return list(self.tasks[task])

    def test_categories(self, task: int) -> list[str]:
        """Every category seen up to and including ``task``."""
        return [c for t in self.tasks[: task + 1] for c in t]

    def datasets(self, task: int, make: Callable[[list[str], str], object]):
        """(train set of ``task``, test set of all seen categories), with ``make(categories, split)`` building a
        dataset, e.g. ``lambda cats, split: MVTecAD(root, cats, split)``."""
        return make(self.train_categories(task), "train"), make(self.test_categories(task), "test")


def _split(classes: Sequence[str], sizes: Sequence[int]) -> tuple[tuple[str, ...], ...]:
    assert sum(sizes) == len(classes)
    out, at = [], 0
    for n in sizes:
        out.append(tuple(classes[at : at + n]))
        at += n
    return tuple(out)


PRESETS: dict[str, Protocol] = {
    name: Protocol(name, _split(classes, sizes))
    for name, classes, sizes in [
        ("mvtec-14-1", MVTEC_CATEGORIES, [14, 1]),
        ("mvtec-10-5", MVTEC_CATEGORIES, [10, 5]),
        ("mvtec-3x5", MVTEC_CATEGORIES, [3] * 5),
        ("mvtec-10-1x5", MVTEC_CATEGORIES, [10, 1, 1, 1, 1, 1]),
        ("visa-11-1", VISA_CATEGORIES, [11, 1]),
        ("visa-8-4", VISA_CATEGORIES, [8, 4]),
        ("visa-8-1x4", VISA_CATEGORIES, [8, 1, 1, 1, 1]),
    ]
}


def _normalise_name(name: str) -> str:
    name = name.strip().lower().replace("×", "x").replace("*", "x")
    name = re.sub(r"[\s_-]+", "-", name)
    return re.sub(r"^(mvtec|visa)-?", r"\1-", name)


def parse_protocol(spec: str) -> Protocol:
    """A preset name ("mvtec-3x5", "MVTec 10-1×5", "visa_8-4") or tasks as "cat,cat;cat" (";" separates tasks,
    "," categories)."""
    key = _normalise_name(spec)
    if key in PRESETS:
        return PRESETS[key]
    if ";" not in spec and "," not in spec and re.match(r"(mvtec|visa)-", key):
        raise ValueError(f"unknown protocol {spec!r}: presets are {', '.join(PRESETS)}")
    tasks = [[c.strip() for c in task.split(",") if c.strip()] for task in spec.split(";")]
    if any(not t for t in tasks):
        raise ValueError(f"protocol {spec!r}: empty task (expected 'cat,cat;cat', ';' between tasks)")
    return Protocol(spec, tuple(tuple(t) for t in tasks))


def get_protocol(spec: str | Sequence[Sequence[str]] | Protocol) -> Protocol:
    """A Protocol from a preset name, a "cat,cat;cat" string or a list of lists of categories."""
    if isinstance(spec, Protocol):
        return spec
    if isinstance(spec, str):
        return parse_protocol(spec)
    tasks = tuple(tuple(t) if not isinstance(t, str) else (t,) for t in spec)
    return Protocol(";".join(",".join(t) for t in tasks), tasks)
