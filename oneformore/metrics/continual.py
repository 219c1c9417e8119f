"""Continual-learning metrics over the matrix R[t, j] = metric on task j after learning task t.

Indexing is 0-based: tasks 0..T, T = number of tasks - 1 (the last task). R[t, j] is only measured for j <= t
(after task t the test set is every task seen so far); entries with j > t are NaN and never used.

- ACC = mean over j <= T of R[T, j]: final average performance.
- FM (forgetting) = mean over j < T of max over l < T of (R[l, j] - R[T, j]); as R[l, j] is not measured for l < j,
  the max runs over j <= l < T.
- BWT (backward transfer) = mean over j < T of (R[T, j] - R[j, j]); negative means forgetting.
FM and BWT are NaN with a single task.
"""

from __future__ import annotations

import math

import numpy as np


def _matrix(r) -> np.ndarray:
    r = np.asarray(r, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"R: expected a square [tasks, tasks] matrix, got shape {r.shape}")
    lower = np.tril(np.ones_like(r, dtype=bool))
    if np.isnan(r[lower]).any():
        raise ValueError("R: every entry R[t, j] with j <= t must be measured (found NaN)")
    return r


def average_accuracy(r) -> float:
    r = _matrix(r)
    return float(r[-1].mean())


def forgetting(r) -> float:
    r = _matrix(r)
    last = r.shape[0] - 1
    if last == 0:
        return math.nan
    drops = [max(r[l, j] for l in range(j, last)) - r[last, j] for j in range(last)]
    return float(np.mean(drops))


def backward_transfer(r) -> float:
    r = _matrix(r)
    last = r.shape[0] - 1
    if last == 0:
        return math.nan
    return float(np.mean([r[last, j] - r[j, j] for j in range(last)]))


def continual_summary(r) -> dict[str, float]:
    """{"acc", "fm", "bwt"} of a R matrix (see the module docstring for the definitions)."""
    return {"acc": average_accuracy(r), "fm": forgetting(r), "bwt": backward_transfer(r)}


class ContinualMatrix:
    """Fills R[t, j] during a continual run, one metric per (task learned, task evaluated).

    ``record(after_task, task, value)`` stores one entry; a task with several categories is usually recorded as
    the mean of its categories' metric (that is what ``record_categories`` does).
    """

    def __init__(self, num_tasks: int):
        if num_tasks < 1:
            raise ValueError(f"num_tasks: expected >= 1, got {num_tasks}")
        self.r = np.full((num_tasks, num_tasks), np.nan)

    def record(self, after_task: int, task: int, value: float) -> None:
        n = self.r.shape[0]
        if not (0 <= task <= after_task < n):
            raise ValueError(f"record: expected 0 <= task <= after_task < {n}, got task={task}, after_task={after_task}")
        self.r[after_task, task] = float(value)

    def record_categories(self, after_task: int, task: int, values: list[float]) -> None:
        self.record(after_task, task, float(np.mean(values)))

    def summary(self) -> dict[str, float]:
        return continual_summary(self.r)
