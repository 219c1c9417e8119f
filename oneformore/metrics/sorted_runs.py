"""The normal pixels' scores as sorted runs: one array in memory, or several spilled to disk.

Exact rank metrics only need, for a query score x, how many normal scores lie below it, plus the scores of the top
fraction (AUPRO); both decompose over sorted runs, so the runs never have to be merged. Kept in memory, the scores
form a single run sorted once at ``compute``; with ``spill_dir`` every ``spill_every`` scores are sorted and written
to an .npy file, read back memory-mapped, so memory holds one buffer instead of every pixel.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def _float_keys(x: np.ndarray) -> np.ndarray:
    """Monotone map of float32 values to int64 keys (order of the keys = order of the floats)."""
    bits = np.asarray(x, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)


def _key_to_float(key: int) -> np.float32:
    bits = key if key >= 0 else (-(key + 1)) | -0x80000000
    return np.array([bits], dtype=np.int64).astype(np.int32).view(np.float32)[0]


class SortedRuns:
    """Read-only view of several ascending float32 arrays as one multiset."""

    def __init__(self, runs: list[np.ndarray]):
        self.runs = [r for r in runs if r.size]
        self.size = int(sum(r.size for r in self.runs))

    def count_below(self, queries: np.ndarray, *, inclusive: bool) -> np.ndarray:
        """For each query, the number of scores < query (<= with ``inclusive``), int64."""
        side = "right" if inclusive else "left"
        queries = np.asarray(queries, dtype=np.float32)
        out = np.zeros(queries.shape, dtype=np.int64)
        for run in self.runs:
            out += np.searchsorted(run, queries, side=side)
        return out

    def kth_largest(self, k: int) -> np.float32:
        """The score at 0-based position ``k`` in descending order."""
        if not 0 <= k < self.size:
            raise IndexError(f"k={k} outside [0, {self.size})")
        if len(self.runs) == 1:
            return self.runs[0][self.size - 1 - k]
        # Largest float x with #(scores >= x) >= k + 1, by bisection over the float32 order.
        lo = int(_float_keys(np.array([min(r[0] for r in self.runs)]))[0])
        hi = int(_float_keys(np.array([max(r[-1] for r in self.runs)]))[0])
        while lo < hi:
            mid = (lo + hi + 1) // 2
            at_or_above = self.size - int(self.count_below(np.array([_key_to_float(mid)]), inclusive=False)[0])
            if at_or_above >= k + 1:
                lo = mid
            else:
                hi = mid - 1
        return _key_to_float(lo)

    def above(self, value: float):
        """Yields, run by run, the scores > ``value`` (ascending slices; memory-mapped runs read only these)."""
        for run in self.runs:
            yield run[np.searchsorted(run, np.float32(value), side="right") :]


class NegativeStore:
    """Accumulates normal-pixel scores; ``runs()`` returns them as :class:`SortedRuns`.

    In memory (``spill_dir=None``) the chunks are merged and sorted in place once, at the first ``runs()`` after
    new data. With ``spill_dir``, whenever ``spill_every`` scores are buffered they are sorted and saved to
    ``spill_dir`` (files removed by ``close``/garbage collection), and ``runs()`` memory-maps them.
    """

    def __init__(self, spill_dir: str | os.PathLike | None = None, spill_every: int = 1 << 26):
        if spill_every < 1:
            raise ValueError(f"spill_every: expected a positive number of scores, got {spill_every}")
        self.spill_every = spill_every
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._sorted: np.ndarray | None = None  # in-memory mode: the sorted run
        self._files: list[Path] = []
        self._dir = None
        if spill_dir is not None:
            Path(spill_dir).mkdir(parents=True, exist_ok=True)
            self._dir = tempfile.TemporaryDirectory(prefix="oneformore-scores-", dir=spill_dir)

    @property
    def size(self) -> int:
        spilled = sum(int(np.load(f, mmap_mode="r").size) for f in self._files)
        return spilled + self._buffered + (0 if self._sorted is None else self._sorted.size)

    def append(self, scores: np.ndarray) -> None:
        self._buffer.append(np.ascontiguousarray(scores, dtype=np.float32))
        self._buffered += scores.size
        if self._dir is not None and self._buffered >= self.spill_every:
            self._spill()

    def _merged_buffer(self, extra: np.ndarray | None = None) -> np.ndarray:
        total = self._buffered + (0 if extra is None else extra.size)
        merged = np.empty(total, dtype=np.float32)
        at = 0
        if extra is not None:
            merged[: extra.size] = extra
            at = extra.size
        while self._buffer:  # copy chunk by chunk, freeing each: peak = all scores + one chunk
            chunk = self._buffer.pop(0)
            merged[at : at + chunk.size] = chunk
            at += chunk.size
        self._buffered = 0
        merged.sort(kind="quicksort")  # numpy's in-place SIMD sort: no index array
        return merged

    def _spill(self) -> None:
        run = self._merged_buffer()
        path = Path(self._dir.name) / f"run_{len(self._files):05d}.npy"
        np.save(path, run)
        self._files.append(path)

    def runs(self) -> SortedRuns:
        if self._dir is not None:
            if self._buffered:
                self._spill()
            return SortedRuns([np.load(f, mmap_mode="r") for f in self._files])
        if self._buffered:
            self._sorted = self._merged_buffer(self._sorted)
        return SortedRuns([] if self._sorted is None else [self._sorted])

    def close(self) -> None:
        self._buffer, self._buffered, self._sorted, self._files = [], 0, None, []
        if self._dir is not None:
            self._dir.cleanup()
