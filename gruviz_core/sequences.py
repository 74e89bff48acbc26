"""Ragged per-dog sequences: every step of every dog one row, plus per-dog offsets.

This is the hand-off between `features` (which builds it from a forms snapshot) and
`extract`/`evaluate` (which run models over it). Layout follows the store's: a flat
"contiguous ragged array" with `offsets[d]:offsets[d+1]` the rows of dog d in date order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Sequences", "pad_batch", "row_index", "whole_group_ranges"]


@dataclass(frozen=True)
class Sequences:
    """All dogs' race histories as flat row arrays plus per-dog offsets."""

    values: np.ndarray
    """(obs, feature) float32: what the race showed about the dog (known after the race)."""
    context: np.ndarray
    """(obs, context) float32: what is known before the race (box, distance, track, price)."""
    offsets: np.ndarray
    """(dog + 1,) int64: rows of dog d are offsets[d]:offsets[d + 1]."""
    dog_id: np.ndarray
    """(dog,) str."""
    dog_name: np.ndarray
    """(dog,) str."""
    race_id: np.ndarray
    """(obs,) str: the race of each row."""
    race_date: np.ndarray
    """(obs,) datetime64[D]."""
    won: np.ndarray
    """(obs,) float32: 1 won, 0 lost, NaN unknown (scratched, void)."""
    market_prob: np.ndarray
    """(obs,) float32: market's implied win probability renormalised within the race; NaN if no price."""
    feature_names: tuple[str, ...]
    """Names of the columns of `values`."""
    context_names: tuple[str, ...]
    """Names of the columns of `context`."""

    @property
    def n_dogs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_obs(self) -> int:
        return int(self.offsets[-1])

    @property
    def row_size(self) -> np.ndarray:
        """(dog,) int64: number of races of each dog."""
        return np.diff(self.offsets)

    def dog_rows(self, d: int) -> slice:
        return slice(int(self.offsets[d]), int(self.offsets[d + 1]))

    def step(self) -> np.ndarray:
        """(obs,) int32: 1-based step of each row within its dog."""
        starts = np.repeat(self.offsets[:-1], self.row_size)
        return (np.arange(self.n_obs) - starts + 1).astype(np.int32)


ROW_META = ("race_id", "race_date", "won", "market_prob")
"""The per-row members of Sequences beside the model inputs: what a block of extraction writes for its rows
(dog_index and step come from the offsets)."""

ROW_SUMMARY: dict[str, str] = {
    "s": "mean |h| over the layer's units (abs-sum S / H)",
    "f090": "share of the layer's units with |h| >= 0.9",
    "f095": "share of the layer's units with |h| >= 0.95",
    "f099": "share of the layer's units with |h| >= 0.99",
    "max_abs": "largest |h| over the layer's units",
    "move": "relative movement ||h_t - h_(t-1)|| / ||h_t|| (h_0 = 0; NaN where h_t = 0)",
    "write": "write fraction 1 - mean z (z -> 1 keeps the old state)",
    "delta": "step change ||h_t - h_(t-1)|| (h_0 = 0)",
}
"""The per-row summaries an extraction block stores beside the states ((obs, layer) float32 each, from the
float32 states it computed) and the stats stage aggregates: name -> what it is."""


@dataclass(frozen=True)
class SequenceRows:
    """Rows [start, start + len(values)) of a snapshot's sequences: the model inputs one block of
    extraction reads, without the rest of the snapshot."""

    start: int
    """First row (in the snapshot's row numbering)."""
    values: np.ndarray
    """(rows, feature) float32, as Sequences.values."""
    context: np.ndarray
    """(rows, context) float32, as Sequences.context."""
    feature_names: tuple[str, ...]
    context_names: tuple[str, ...]
    meta: dict[str, np.ndarray]
    """{name: (rows,)} the same rows' ROW_META members (those asked for)."""


def pad_batch(
    rows: np.ndarray, offsets: np.ndarray, dogs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gather dogs' rows into a zero-padded (B, T, C) block. rows: (obs, C) -> (B, T, C), lengths (B,)."""
    starts, ends = offsets[dogs], offsets[dogs + 1]
    lengths = (ends - starts).astype(np.int64)
    t_max = int(lengths.max()) if len(lengths) else 0
    out = np.zeros((len(dogs), t_max, rows.shape[1]), dtype=rows.dtype)
    mask = np.arange(t_max)[None, :] < lengths[:, None]  # (B, T)
    idx = (starts[:, None] + np.arange(t_max)[None, :])[mask]
    out[mask] = rows[idx]
    return out, lengths


def row_index(rows, n: int) -> np.ndarray:
    """(k,) int64 row numbers of a NumPy row index (slice, bool mask, integers, negatives from the end) into n rows."""
    if isinstance(rows, slice):
        return np.arange(*rows.indices(n), dtype=np.int64)
    rows = np.asarray(rows)
    if rows.dtype == bool:
        return np.flatnonzero(rows)
    rows = np.ravel(rows).astype(np.int64, copy=False)
    return np.where(rows < 0, rows + n, rows)


def whole_group_ranges(edges: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """[(start, stop)] consecutive ranges over rows 0..edges[-1], each ending at a group edge and holding the fewest
    whole groups that reach `rows` rows (the last one fewer). edges: ascending group starts, then the row count
    (a dog's offsets are such edges)."""
    out, a, n = [], 0, int(edges[-1])
    while a < n:
        b = int(edges[min(np.searchsorted(edges, a + max(int(rows), 1), side="left"), len(edges) - 1)])
        out.append((a, b))
        a = b
    return out
