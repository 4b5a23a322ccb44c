"""Put independently timestamped sensor streams on one uniform time grid.

Used both offline (dataset loading) and online (agent pipeline), so training and
inference see samples interpolated the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Longer than this between two raw samples is a gap; nothing is interpolated across it.
MAX_GAP_S = 0.25


def gap_free_runs(t: np.ndarray, max_gap: float = MAX_GAP_S) -> list[tuple[int, int]]:
    """Index ranges [start, end) of t (sorted) with no step larger than max_gap."""
    if len(t) == 0:
        return []
    breaks = np.flatnonzero(np.diff(t) > max_gap) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(t)]])
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def sorted_unique(t: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by time and drop repeated timestamps (the WISDM watch files have both)."""
    order = np.argsort(t, kind="stable")
    t, values = t[order], values[order]
    keep = np.concatenate([[True], np.diff(t) > 0]) if len(t) else np.zeros(0, bool)
    return t[keep], values[keep]


def align_streams(
    streams: Sequence[tuple[np.ndarray, np.ndarray]], rate_hz: float, max_gap: float = MAX_GAP_S
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interpolate every stream onto a common grid wherever all streams are gap-free.

    streams: (t [N] seconds, values [N, K]) each. Returns gap-free pieces (grid_t, [M, sum K]).
    """
    cleaned = [sorted_unique(np.asarray(t, float), np.asarray(v, float)) for t, v in streams]
    if any(len(t) < 2 for t, _ in cleaned):
        return []
    # Intersect the gap-free runs of every stream: the result is where all of them are usable.
    spans = [(t[s], t[e - 1]) for t, _ in cleaned[:1] for s, e in gap_free_runs(t, max_gap)]
    for t, _ in cleaned[1:]:
        other = [(t[s], t[e - 1]) for s, e in gap_free_runs(t, max_gap)]
        spans = [
            (max(a0, b0), min(a1, b1)) for a0, a1 in spans for b0, b1 in other if max(a0, b0) < min(a1, b1)
        ]
    step = 1.0 / rate_hz
    pieces = []
    for lo, hi in spans:
        n = int(np.floor((hi - lo) / step)) + 1
        if n < 2:
            continue
        grid = lo + step * np.arange(n)
        cols = [np.column_stack([np.interp(grid, t, v[:, k]) for k in range(v.shape[1])]) for t, v in cleaned]
        pieces.append((grid, np.hstack(cols)))
    return pieces


def cut(series: Sequence[np.ndarray], window: int, hop: int, channels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Windows of `window` rows starting every `hop` rows inside each series ([N_i, C] each), as the agent's
    `Windower` places them: (windows [W, window, C] float32, index into `series` of each window's source).
    `channels` sizes the empty result when there are no series at all."""
    xs, source = [], []
    for i, values in enumerate(series):
        for start in range(0, len(values) - window + 1, hop):
            xs.append(values[start : start + window])
            source.append(i)
    if not xs:
        c = series[0].shape[1] if len(series) else channels
        return np.zeros((0, window, c), np.float32), np.array([], int)
    return np.stack(xs), np.array(source)

