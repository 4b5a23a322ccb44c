"""Watches at other native rates: real WISDM data re-encoded at 10, 52 and 100 Hz gives the
model's decisions of the native 20 Hz stream; tones the 20 Hz grid cannot hold do not alias
onto it; gaps reset the grid and are counted; irregular timestamps are read correctly."""

from __future__ import annotations

import numpy as np
import pytest

from l2mu.agent.pipeline import StreamAligner, Windower
from l2mu.agent.resample import MIN_INTERVALS, SensorStream
from tests.support.resample import GRID_HZ


def tone_on_grid(freq_hz: float, rate_hz: float, seconds: float = 10.0,
                 jitter: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    t = np.arange(0, seconds, 1 / rate_hz) + rng.uniform(-jitter, jitter, int(np.ceil(seconds * rate_hz))) / rate_hz
    aligner = StreamAligner(["acc"], GRID_HZ)
    grid = [g for tt in t for g in aligner.push("acc", float(tt), (np.sin(2 * np.pi * freq_hz * tt), 0, 0))[0]]
    return np.array([g.t for g in grid]), np.array([g.values[0] for g in grid])


@pytest.mark.parametrize("freq_hz", [11.0, 13.0, 17.0, 23.0, 31.0])
def test_tone_above_grid_nyquist_does_not_alias(freq_hz: float) -> None:
    times, values = tone_on_grid(freq_hz, 100.0)
    assert len(times) > 150
    # Unfiltered, a 100 Hz stream read at the grid times folds this tone back at full amplitude.
    unfiltered = np.sin(2 * np.pi * freq_hz * times)
    assert np.abs(unfiltered).max() > 0.5
    assert np.abs(values).max() < 0.01  # ≥ 40 dB down


def test_tone_in_band_passes_with_honest_timestamps() -> None:
    times, values = tone_on_grid(2.0, 100.0)
    # Zero phase: the filter's delay is compensated, each grid value belongs to its timestamp.
    np.testing.assert_allclose(values, np.sin(2 * np.pi * 2.0 * times), atol=0.01)
    assert times[0] == pytest.approx(0.5, abs=0.02)  # the kernel's half-width: first one is whole


def test_grid_rate_stream_is_not_filtered() -> None:
    # At the model's own rate a 9 Hz tone (below the grid's 10 Hz Nyquist) is only interpolated,
    # as in training: on-sample grid points return the samples themselves.
    t = np.arange(0, 5, 0.05)
    aligner = StreamAligner(["acc"], GRID_HZ)
    grid = [g for tt in t for g in aligner.push("acc", float(tt), (np.sin(2 * np.pi * 9 * tt), 0, 0))[0]]
    np.testing.assert_allclose([g.values[0] for g in grid], np.sin(2 * np.pi * 9 * t[: len(grid)]), atol=1e-9)


def test_time_jump_resets_grid_filter_and_counts() -> None:
    aligner = StreamAligner(["acc", "gyro"], GRID_HZ)
    windower = Windower(40, 20)
    grid_t, gaps, windows = [], [], []
    before = np.arange(0, 5, 0.01)
    after = np.arange(7, 12, 0.05)  # comes back slower: its rate is measured afresh
    for t in [*before, *after]:
        for sensor in ("acc", "gyro"):
            grid, gap = aligner.push(sensor, float(t), (1.0 if t < 6 else -1.0, 0, 0))
            gaps.append(gap)
            if gap:
                windower.reset()
            for g in grid:
                grid_t.append(g.t)
                if (w := windower.push(g)) is not None:
                    windows.append((w.t_start, w.t_end, w.values[:, 0]))
    assert sum(gaps) == 1 and aligner.counters.gaps == 1 and aligner.counters.gaps_reported == 0
    grid_t = np.array(grid_t)
    assert not np.any((grid_t > 4.99) & (grid_t < 7.0))
    assert grid_t.max() > 11.5  # the grid restarted
    # No window spans the gap, and no filtered value leaks across it.
    assert windows and all(e < 5 or s >= 7 for s, e, _ in windows)
    assert all(np.allclose(v, 1.0 if e < 5 else -1.0) for _, e, v in windows)
    assert aligner.rates_hz()["acc"] == pytest.approx(20.0)


def test_reported_gap_resets_grid_and_counts() -> None:
    aligner = StreamAligner(["acc"], GRID_HZ)
    grid_t, gaps = [], []
    for i, t in enumerate(np.arange(0, 4, 0.02)):
        if i == 100:  # t = 2.0: the driver saw a sequence number skip
            assert aligner.mark_gap("acc")
            assert not aligner.mark_gap("magnetometer")
        grid, gap = aligner.push("acc", float(t), (t, 0, 0))
        gaps.append(gap)
        grid_t += [g.t for g in grid]
    assert gaps.index(True) == 100 and sum(gaps) == 1
    assert aligner.counters.gaps == 1 and aligner.counters.gaps_reported == 1
    grid_t = np.array(grid_t)
    # Before the report the grid stopped short of the look-ahead; after it, it restarts once the
    # rate is known again and the first kernel is whole.
    assert not np.any((grid_t > 1.5) & (grid_t < 2.0 + 0.5))
    assert grid_t.max() > 3.4  # the stream ends at 3.98, less the 0.5 s look-ahead


def test_out_of_order_is_dropped_not_a_gap() -> None:
    aligner = StreamAligner(["acc"], GRID_HZ)
    for t in (0.0, 0.01, 0.02, 0.015, 0.02, 0.03):
        _, gap = aligner.push("acc", t, (0, 0, 0))
        assert not gap
    assert aligner.counters.samples_out_of_order == 2 and aligner.counters.gaps == 0


def test_irregular_timestamps() -> None:
    # Bursty ~100 Hz timing (intervals 2–18 ms): the rate is still found, the in-band tone read
    # at the right times and an out-of-band tone removed.
    rng = np.random.default_rng(2)
    t = np.cumsum(rng.uniform(0.002, 0.018, 1000))
    aligner = StreamAligner(["acc"], GRID_HZ)
    grid = []
    for tt in t:
        x = np.sin(2 * np.pi * 1.5 * tt) + 0.5 * np.sin(2 * np.pi * 14 * tt)
        grid += aligner.push("acc", float(tt), (x, 0, 0))[0]
    times = np.array([g.t for g in grid])
    assert 70 < aligner.rates_hz()["acc"] < 140  # a median of 32 such intervals
    assert len(times) > 0.9 * (t[-1] - t[0] - 1.0) * GRID_HZ
    err = np.array([g.values[0] for g in grid]) - np.sin(2 * np.pi * 1.5 * times)
    # Irregular sampling leaves some of the 0.5-amplitude 14 Hz tone behind (weighting samples by
    # their share of time keeps it ≈ 6× smaller than a plain weighted sum); unfiltered it is 0.5.
    assert np.abs(err).max() < 0.06 and np.sqrt(np.mean(err**2)) < 0.02

    # Irregular at the grid rate: plain linear interpolation, as offline.
    t20 = np.cumsum(rng.uniform(0.03, 0.07, 200))
    x20 = np.sin(2 * np.pi * 1.0 * t20)
    aligner = StreamAligner(["acc"], GRID_HZ)
    grid = [g for tt, x in zip(t20, x20, strict=True) for g in aligner.push("acc", float(tt), (x, 0, 0))[0]]
    times = np.array([g.t for g in grid])
    np.testing.assert_allclose([g.values[0] for g in grid], np.interp(times, t20, x20), atol=1e-12)


def test_stream_keeps_bounded_history() -> None:
    stream = SensorStream(GRID_HZ)
    for i in range(20000):
        stream.append(i * 0.01, (i, 0, 0))
        if i > MIN_INTERVALS and i % 5 == 0:
            stream.trim(i * 0.01 - 0.5)
    assert len(stream) < 200
    assert stream.value_at(199.5)[0] == pytest.approx(19950, abs=1e-6)
