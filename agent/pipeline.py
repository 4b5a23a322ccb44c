"""Per-watch signal path: raw timestamped samples → common 20 Hz grid → sliding windows.

The online twin of l2mu.model.timegrid.align_streams: for a watch at the model's own rate
(≤ 1.2 × grid rate) the same linear interpolation and the same gap rule, so the agent feeds
the model what training fed it. A faster watch is low-passed at the grid times before it can
alias (see l2mu.agent.resample, which also says why window timestamps stay honest and what
latency the filter adds); every sensor's rate is measured from its own timestamps, never
taken from a driver's nominal setting.

Gap policy. A window never spans missing data:

- A gap is more than `max_gap` (MAX_GAP_S, 0.25 s) between two consecutive samples of one
  sensor, or a loss the caller knows of and reports with `StreamAligner.mark_gap(sensor)`
  (a skipped sequence number, a dropped BLE notification, a reconnect).
- On a gap every sensor's buffer, rate estimate and filter state are cleared and the grid
  restarts once all sensors have delivered MIN_INTERVALS intervals again; grid times that
  would have needed samples across the gap are never emitted (up to the filter's look-ahead
  before it). The next `push` returns gap=True, on which the caller resets its `Windower`.
- `counters.gaps` counts every gap, `counters.gaps_reported` those that came from mark_gap.
- A sample not later than its sensor's previous one is dropped and counted in
  `counters.samples_out_of_order`; it is never a gap.

Invalid samples. A sample whose time or any value is not finite (NaN, ±inf), or whose value
lies beyond the physical range of any watch (`l2mu.agent.settings.SENSOR_LIMITS`), is never
interpolated: it is dropped, counted in `counters.samples_invalid`, and restarts the grid like
a gap, so every window that would have touched it is dropped and the windows after it start
afresh. A run of such samples (until the grid emits a sample again) is one episode, counted
once in `counters.invalid_episodes` and once in `counters.gaps`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from l2mu.agent.resample import SensorStream
from l2mu.agent.settings import SENSOR_LIMITS
from l2mu.model.timegrid import MAX_GAP_S


@dataclass
class PipelineCounters:
    samples_in: int = 0
    samples_out_of_order: int = 0
    gaps: int = 0
    gaps_reported: int = 0
    samples_invalid: int = 0  # not finite or beyond SENSOR_LIMITS: dropped, the grid restarted
    invalid_episodes: int = 0  # runs of invalid samples, each also counted once in `gaps`
    grid_samples: int = 0
    windows: int = 0


@dataclass
class GridSample:
    t: float
    values: np.ndarray  # [C], sensors × xyz in the model's channel order


class StreamAligner:
    """Reads every sensor's stream at each grid time; a grid time is emitted once every sensor
    can be read there (linear: a sample at or after it; filtered: the kernel's look-ahead).
    The grid starts at the latest first sample (plus the look-ahead for filtered sensors, so
    the first kernel is whole) and restarts after a gap (see the module docstring)."""

    def __init__(self, sensors: Sequence[str], rate_hz: float, max_gap: float = MAX_GAP_S) -> None:
        self.sensors = list(sensors)
        self.step = 1.0 / rate_hz
        self.max_gap = max_gap
        self.streams: dict[str, SensorStream] = {s: SensorStream(rate_hz) for s in self.sensors}
        self.next_t: float | None = None
        self.counters = PipelineCounters()
        self._gap_pending = False
        self._invalid = False  # inside a run of invalid samples: the grid has not emitted since

    def rates_hz(self) -> dict[str, float | None]:
        """Each sensor's measured native rate (None until known), for logs and status."""
        return {s: stream.rate_hz for s, stream in self.streams.items()}

    def mark_gap(self, sensor: str) -> bool:
        """The caller lost samples of `sensor` (sequence gap, dropped packet): restart the grid.
        Returns False for a sensor the model does not use, whose losses do not matter."""
        if sensor not in self.streams:
            return False
        self.counters.gaps += 1
        self.counters.gaps_reported += 1
        self._restart()
        return True

    def push(self, sensor: str, t: float, xyz: Sequence[float]) -> tuple[list[GridSample], bool]:
        """Add one sample; returns (grid samples now complete, whether a gap was crossed since
        the previous push, detected here or reported through mark_gap)."""
        stream = self.streams.get(sensor)
        if stream is None:
            return [], False  # a sensor the model does not use
        self.counters.samples_in += 1
        if not valid_sample(sensor, t, xyz):
            self.counters.samples_invalid += 1
            if not self._invalid:
                self._invalid = True
                self.counters.invalid_episodes += 1
                self.counters.gaps += 1
            self._restart()  # every time: no later grid time may be read across this sample either
            return [], False
        if len(stream) and t <= stream.last_t:
            self.counters.samples_out_of_order += 1
            return [], False
        if len(stream) and t - stream.last_t > self.max_gap:
            self.counters.gaps += 1
            self._restart()  # the new sample below is the first after the gap
        gap, self._gap_pending = self._gap_pending, False
        stream.append(t, xyz)
        return self._drain(), gap

    def _restart(self) -> None:
        for stream in self.streams.values():
            stream.clear()
        self.next_t = None
        self._gap_pending = True

    def _drain(self) -> list[GridSample]:
        streams = [self.streams[s] for s in self.sensors]
        if self.next_t is None:
            # Wait until every rate is known: it decides how each stream is read from the start.
            if not all(s.ready for s in streams):
                return []
            self.next_t = max(s.first_t + s.lookahead for s in streams)
        out: list[GridSample] = []
        while all(s.can_read(self.next_t) for s in streams):
            g = self.next_t
            out.append(GridSample(g, np.concatenate([s.value_at(g) for s in streams])))
            self.next_t = g + self.step
        if out:
            for s in streams:
                s.trim(self.next_t)
            self._invalid = False
        self.counters.grid_samples += len(out)
        return out


def valid_sample(sensor: str, t: float, xyz: Sequence[float]) -> bool:
    """Finite time and values, each within the physical range of any watch (SENSOR_LIMITS)."""
    limit = SENSOR_LIMITS.get(sensor, math.inf)
    x, y, z = xyz
    # abs(nan) <= limit is False, and so is abs(inf) <= limit: one comparison per value rejects all three kinds.
    return math.isfinite(t) and abs(x) <= limit and abs(y) <= limit and abs(z) <= limit


@dataclass
class Window:
    values: np.ndarray | None  # [T, C] raw SI units; None from the step path, which keeps no samples
    t_start: float
    t_end: float
    counts: np.ndarray | None = None  # the model's spike counts, when the step path has already run it


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
