"""Per-watch signal path: raw timestamped samples → common 20 Hz grid → sliding windows.

The online twin of l2mu.model.timegrid.align_streams: same linear interpolation, same gap
rule, so the agent feeds the model what training fed it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from l2mu.model.timegrid import MAX_GAP_S


@dataclass
class PipelineCounters:
    samples_in: int = 0
    samples_out_of_order: int = 0
    gaps: int = 0
    grid_samples: int = 0
    windows: int = 0


@dataclass
class GridSample:
    t: float
    values: np.ndarray  # [C], sensors × xyz in the model's channel order


class StreamAligner:
    """Interpolates each sensor's stream onto one grid; a grid point is emitted once every
    sensor has a sample at or after it. Across a gap (> MAX_GAP_S between two samples of any
    sensor) nothing is interpolated: the grid restarts after it and `on_gap` is reported."""

    def __init__(self, sensors: Sequence[str], rate_hz: float, max_gap: float = MAX_GAP_S) -> None:
        self.sensors = list(sensors)
        self.step = 1.0 / rate_hz
        self.max_gap = max_gap
        self.buffers: dict[str, deque[tuple[float, np.ndarray]]] = {s: deque() for s in self.sensors}
        self.next_t: float | None = None
        self.counters = PipelineCounters()

    def push(self, sensor: str, t: float, xyz: Sequence[float]) -> tuple[list[GridSample], bool]:
        """Add one sample; returns (grid samples now complete, whether a gap was crossed)."""
        if sensor not in self.buffers:
            return [], False  # a sensor the model does not use
        self.counters.samples_in += 1
        buf = self.buffers[sensor]
        if buf and t <= buf[-1][0]:
            self.counters.samples_out_of_order += 1
            return [], False
        gap = bool(buf) and t - buf[-1][0] > self.max_gap
        if gap:
            # Keep only the new sample for every sensor and start the grid again after it.
            self.counters.gaps += 1
            for b in self.buffers.values():
                b.clear()
            self.next_t = None
        buf.append((t, np.asarray(xyz, dtype=np.float64)))
        return self._drain(), gap

    def _drain(self) -> list[GridSample]:
        if any(not b for b in self.buffers.values()):
            return []
        if self.next_t is None:
            self.next_t = max(b[0][0] for b in self.buffers.values())
        out: list[GridSample] = []
        while all(b[-1][0] >= self.next_t for b in self.buffers.values()):
            g = self.next_t
            parts = [self._interp(self.buffers[s], g) for s in self.sensors]
            out.append(GridSample(g, np.concatenate(parts)))
            self.next_t = g + self.step
        for b in self.buffers.values():
            # Samples wholly before the next grid point's left neighbour are no longer needed.
            while len(b) > 1 and b[1][0] <= self.next_t:
                b.popleft()
        self.counters.grid_samples += len(out)
        return out

    @staticmethod
    def _interp(buf: deque[tuple[float, np.ndarray]], g: float) -> np.ndarray:
        prev = buf[0]
        for item in buf:
            if item[0] >= g:
                if item[0] == prev[0]:
                    return item[1]
                w = (g - prev[0]) / (item[0] - prev[0])
                return prev[1] + w * (item[1] - prev[1])
            prev = item
        return buf[-1][1]


@dataclass
class Window:
    values: np.ndarray  # [T, C] raw SI units
    t_start: float
    t_end: float


@dataclass
class Windower:
    """Keeps the last `length` grid samples and emits a window every `hop` new ones."""

    length: int
    hop: int
    _buf: deque = field(default_factory=deque)
    _since: int = 0

    def reset(self) -> None:
        self._buf.clear()
        self._since = 0

    def push(self, sample: GridSample) -> Window | None:
        self._buf.append(sample)
        if len(self._buf) > self.length:
            self._buf.popleft()
        self._since += 1
        if len(self._buf) == self.length and self._since >= self.hop:
            self._since = 0
            return Window(np.stack([s.values for s in self._buf]), self._buf[0].t, self._buf[-1].t)
        return None


def normalise(values: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    return ((values - np.asarray(mean)) / np.asarray(std)).astype(np.float32)
