"""One sensor's raw, timestamped samples → its value at any time of the model's grid.

A watch streams at its own native rate (InfiniTime ~10 Hz, WISDM phones 20 Hz, Polar 52 Hz,
MetaWear and Bangle.js up to 100 Hz) while the model runs on a 20 Hz grid. `SensorStream`
measures the native rate from the timestamps (median of the recent intervals, so jitter,
a late BLE packet or one lost sample barely move it) and picks how to read the stream:

- native rate ≤ FILTER_ABOVE × grid rate: linear interpolation between the two neighbours,
  exactly as `l2mu.model.timegrid.align_streams` did for training. A 20 Hz watch therefore
  feeds the model the same numbers training saw; a slower one is upsampled (it simply has no
  content above its own Nyquist frequency).
- faster: a windowed-sinc low-pass evaluated at the grid time itself. The kernel is a
  continuous function of time (sinc cut at CUTOFF_FRACTION × grid rate, Kaiser-tapered over
  ±HALF_WIDTH_STEPS grid steps), weighted by each sample's share of the time axis and normalised to unit
  gain, so it works on irregular timestamps and needs no per-rate design. With the defaults
  (20 Hz grid) it is flat to 7 Hz (−0.9 dB at 8 Hz), −6 dB at 9 Hz, −20 dB at 10 Hz (the
  grid's Nyquist frequency, which folds onto itself) and below −65 dB from 11 Hz up: what would
  fold back onto the 20 Hz grid is gone before it can alias, while the 7–10 Hz band that the
  model saw in training is kept. (A cut at 8 Hz, fully −50 dB at 10 Hz, cost a point of decision
  agreement on re-encoded WISDM data: tests/unit/test_resample.py.)

The kernel is symmetric around the grid time, i.e. a linear-phase FIR whose group delay is
compensated exactly: a grid sample stamped t holds the signal around t, not around
t − delay, so window timestamps stay honest. The price is latency: a grid time t can only be
computed once the stream has reached t + HALF_WIDTH_STEPS grid steps (0.5 s).

Cost: O(1) per raw sample; per grid sample one vectorised dot product over the ≈ 2 × 0.5 s
of samples in the kernel (100 at 100 Hz), so a fast watch costs 20 small dot products a second.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence

import numpy as np

FILTER_ABOVE = 1.2  # × grid rate; at or below it the stream is interpolated unfiltered
CUTOFF_FRACTION = 0.45  # × grid rate: −6 dB point of the low-pass (9 Hz for a 20 Hz grid)
HALF_WIDTH_STEPS = 10  # kernel half-width in grid steps (0.5 s for a 20 Hz grid)
KAISER_BETA = 6.0  # side lobes ≈ −65 dB
KERNEL_TABLE_POINTS = 4097  # the kernel tabulated over τ ∈ [−1, 1]; linear interpolation errs < 1e-5
RATE_INTERVALS = 32  # recent intervals the rate is the median of
MIN_INTERVALS = 4  # intervals needed before the rate (and so the read-out) is trusted


def _kernel_table() -> tuple[np.ndarray, np.ndarray]:
    """The low-pass kernel as a function of τ = (t − g) / half-width, which is all it depends on.

    sinc(2 · cutoff · half-width · τ) · I0(β √(1 − τ²)): cutoff and half-width are both fixed
    multiples of the grid rate, so their product (4.5) and the kernel are the same for every grid.
    Evaluating I0 and sinc per read cost ~0.5 ms of numpy calls per grid sample and sensor — most of
    a 64-watch agent's CPU; the table costs one `np.interp` (the unit gain normalisation makes the
    kernel's scale irrelevant)."""
    tau = np.linspace(-1.0, 1.0, KERNEL_TABLE_POINTS)
    taper = np.i0(KAISER_BETA * np.sqrt(np.clip(1.0 - tau * tau, 0.0, None)))
    return tau, np.sinc(2.0 * CUTOFF_FRACTION * HALF_WIDTH_STEPS * tau) * taper


_KERNEL_TAU, _KERNEL = _kernel_table()


class SensorStream:
    """The recent samples of one sensor, with its measured rate and its read-out at grid times."""

    def __init__(self, grid_rate_hz: float, channels: int = 3) -> None:
        self.grid_rate_hz = grid_rate_hz
        self.half_width = HALF_WIDTH_STEPS / grid_rate_hz
        self.cutoff_hz = CUTOFF_FRACTION * grid_rate_hz
        # A growable array pair rather than a deque of tuples: the filter reads a slice at once.
        self._t = np.empty(256)
        self._v = np.empty((256, channels))
        self._lo = 0
        self._hi = 0
        self._intervals: deque[float] = deque(maxlen=RATE_INTERVALS)
        self._rate: float | None = None
        self._fresh = 0  # intervals added since the rate was last computed
        # Kept as Python floats beside the arrays: the aligner asks for them for every sample of every watch.
        self._last = 0.0
        self._lookahead = 0.0

    def __len__(self) -> int:
        return self._hi - self._lo

    @property
    def first_t(self) -> float:
        return float(self._t[self._lo])

    @property
    def last_t(self) -> float:
        return self._last

    def clear(self) -> None:
        """Forget samples and rate: after a gap the watch may come back at another rate."""
        self._lo = self._hi = 0
        self._intervals.clear()
        self._rate = None
        self._fresh = 0
        self._lookahead = 0.0

    def append(self, t: float, xyz: Sequence[float]) -> None:
        """Caller guarantees t is later than last_t."""
        if self._hi == len(self._t):
            self._make_room()
        if self._hi > self._lo:
            self._intervals.append(t - self._t[self._hi - 1])
            self._fresh += 1
        self._t[self._hi] = t
        self._v[self._hi] = xyz
        self._hi += 1
        self._last = float(t)

    def _make_room(self) -> None:
        n = len(self)
        if n > len(self._t) // 2:
            self._t = np.concatenate([self._t, np.empty_like(self._t)])
            self._v = np.concatenate([self._v, np.empty_like(self._v)])
        self._t[:n] = self._t[self._lo : self._hi]
        self._v[:n] = self._v[self._lo : self._hi]
        self._lo, self._hi = 0, n

    @property
    def ready(self) -> bool:
        return len(self._intervals) >= MIN_INTERVALS

    @property
    def rate_hz(self) -> float | None:
        """Median-based native rate; None until MIN_INTERVALS intervals are known."""
        if not self.ready:
            return None
        # Recomputed every few samples, not every one: a watch's rate does not move that fast.
        if self._rate is None or self._fresh >= RATE_INTERVALS // 4:
            self._rate = 1.0 / statistics.median(self._intervals)
            self._fresh = 0
            self._lookahead = self.half_width if self._rate > FILTER_ABOVE * self.grid_rate_hz else 0.0
        return self._rate

    @property
    def filtered(self) -> bool:
        return self.lookahead > 0.0  # the rule (rate above FILTER_ABOVE × grid) is applied once, with the rate

    @property
    def lookahead(self) -> float:
        """How far past a grid time the stream must reach before that time can be read."""
        self.rate_hz  # noqa: B018 - brings the rate, and with it the lookahead, up to date
        return self._lookahead

    def can_read(self, g: float) -> bool:
        return self._hi > self._lo and self._last >= g + self.lookahead

    def value_at(self, g: float) -> np.ndarray:
        t = self._t[self._lo : self._hi]
        v = self._v[self._lo : self._hi]
        if self.filtered:
            return self._lowpass(t, v, g)
        i = int(t.searchsorted(g, side="left"))
        if i == 0:
            return v[0].copy()
        if i == len(t):
            return v[-1].copy()
        # Same expression as before the filter existed, so 20 Hz output is bit-for-bit unchanged.
        w = (g - t[i - 1]) / (t[i] - t[i - 1])
        return v[i - 1] + w * (v[i] - v[i - 1])

    def _lowpass(self, t: np.ndarray, v: np.ndarray, g: float) -> np.ndarray:
        # ndarray.searchsorted, not np.searchsorted: the function wrapper costs 4× the search.
        lo = int(t.searchsorted(g - self.half_width, side="left"))
        hi = int(t.searchsorted(g + self.half_width, side="right"))
        if hi - lo < 2:
            return v[min(lo, len(t) - 1)].copy()
        # Each sample stands for half the time to each neighbour (neighbours outside the kernel
        # included), which turns the sum into an integral that irregular timestamps do not bias.
        # (np.gradient's central difference, with its one-sided ends, written out: it is the
        # hottest line of a many-watch agent and np.gradient's generality costs ~30 µs a call.)
        a, b = max(lo - 1, 0), min(hi + 1, len(t))
        tt = t[a:b]
        share = np.empty(len(tt))
        share[1:-1] = (tt[2:] - tt[:-2]) / 2.0
        share[0] = tt[1] - tt[0]
        share[-1] = tt[-1] - tt[-2]
        w = np.interp((t[lo:hi] - g) / self.half_width, _KERNEL_TAU, _KERNEL) * share[lo - a : hi - a]
        return (w @ v[lo:hi]) / w.sum()

    def trim(self, before: float) -> None:
        """Drop samples no read at or after `before` can need (history for the kernel stays)."""
        t = self._t[self._lo : self._hi]
        keep_from = int(t.searchsorted(before - self.half_width, side="left")) - 1
        self._lo += max(keep_from, 0)
