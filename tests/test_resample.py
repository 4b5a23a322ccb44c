"""Watches at other native rates: real WISDM data re-encoded at 10, 52 and 100 Hz gives the
model's decisions of the native 20 Hz stream; tones the 20 Hz grid cannot hold do not alias
onto it; gaps reset the grid and are counted; irregular timestamps are read correctly."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from l2mu.agent.events import Sample
from l2mu.agent.pipeline import StreamAligner, Windower, normalise
from l2mu.agent.recording import recording_from_wisdm
from l2mu.agent.resample import MIN_INTERVALS, SensorStream
from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
from l2mu.model.metadata import ModelFileError
from l2mu.model.splits import TEST_SUBJECTS
from l2mu.model.timegrid import gap_free_runs
from l2mu.model.wisdm import HAND7

GRID_HZ = 20.0
NATIVE_HZ = 20  # WISDM-2019 watch data


@pytest.fixture(scope="module")
def classifier(request: pytest.FixtureRequest) -> ExecuTorchClassifier:
    """The bundled model; the small exported test model until a bundled one exists."""
    try:
        path = resolve_model(None)
    except ModelFileError:
        path = request.getfixturevalue("tiny_program")
    return ExecuTorchClassifier(path)


@pytest.fixture(scope="module")
def recordings(wisdm_root: Path) -> dict[int, list[Sample]]:
    # Wearers the bundled model never trained on, every hand activity, 20 s each.
    return {subject: recording_from_wisdm(wisdm_root, subject, HAND7, seconds=20) for subject in TEST_SUBJECTS}


def reencode(samples: list[Sample], rate_hz: int, seed: int = 0) -> list[Sample]:
    """What a watch sampling the same motion at rate_hz would have sent: each gap-free piece
    of each sensor band-limited-resampled (resample_poly filters before decimating), on the
    original clock (drift kept), with timestamp jitter of ±10 % of the new period."""
    rng = np.random.default_rng(seed)
    ratio = Fraction(rate_hz, NATIVE_HZ)
    out: list[Sample] = []
    for sensor in ("acc", "gyro"):
        mine = [s for s in samples if s.sensor == sensor]
        t = np.array([s.t for s in mine])
        v = np.array([s.xyz for s in mine])
        labels = [s.label for s in mine]
        for a, b in gap_free_runs(t):
            n = b - a
            if n < 8:
                continue
            values = resample_poly(v[a:b], ratio.numerator, ratio.denominator, axis=0, padtype="line")
            where = np.arange(len(values)) * ratio.denominator / ratio.numerator  # in old samples
            keep = where <= n - 1
            times = np.interp(where[keep], np.arange(n), t[a:b])
            times += rng.uniform(-0.1, 0.1, len(times)) / rate_hz
            for w, tt, xyz in zip(where[keep], times, values[keep], strict=True):
                out.append(Sample(float(tt), sensor, tuple(float(x) for x in xyz), labels[a + round(w)]))
    out.sort(key=lambda s: s.t)
    return out


def decide(samples: list[Sample], clf: ExecuTorchClassifier, hop: int,
           only_near: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(window end times, decided class, measured rates): the steps of Agent.handle_sample.
    only_near (sorted end times): classify just the windows ending within half a grid step of
    one of them, which makes an every-step reference affordable."""
    meta = clf.meta
    aligner = StreamAligner(meta.sensors, meta.sample_rate_hz)
    windower = Windower(meta.window_samples, hop)
    half_step = 0.5 / meta.sample_rate_hz + 1e-3
    ends, picks = [], []
    for s in samples:
        grid, gap = aligner.push(s.sensor, s.t, s.xyz)
        if gap:
            windower.reset()
        for g in grid:
            window = windower.push(g)
            if window is None:
                continue
            if only_near is not None:
                i = int(np.searchsorted(only_near, window.t_end))
                if np.min(np.abs(only_near[max(i - 1, 0) : i + 1] - window.t_end)) > half_step:
                    continue
            ends.append(window.t_end)
            picks.append(clf.decide(normalise(window.values, meta.norm_mean, meta.norm_std)).index)
    return np.array(ends), np.array(picks), aligner.rates_hz()


# Measured (model trained on the fixed split, 6 test wearers × 7 activities × 20 s, 828
# windows a rate): 52 Hz agrees on 96.2 %, 100 Hz on 96.0 %, 10 Hz on 95.4 %. That is close to
# what the model's own sensitivity allows: 1 % sensor noise on the 20 Hz stream itself leaves
# 97.6 %, ±5 ms timestamp jitter 97.7 %. Single wearers range 90–100 %, hence the pooling.
# A 10 Hz watch has nothing above 5 Hz, where part of clapping, dribbling and brushing lives;
# its bound is lower but still far from a broken path (chance agreement ≈ 1/7).
MIN_AGREEMENT = {10: 0.85, 52: 0.95, 100: 0.95}


@pytest.mark.parametrize("rate_hz", [10, 52, 100])
def test_decisions_survive_native_rate(recordings: dict[int, list[Sample]], classifier: ExecuTorchClassifier,
                                       rate_hz: int) -> None:
    hop = round(1.0 * classifier.meta.sample_rate_hz)  # the agent's one decision a second
    agree, total = 0, 0
    for subject, recording in recordings.items():
        ends, picks, rates = decide(reencode(recording, rate_hz, seed=subject), classifier, hop=hop)
        assert all(abs(r - rate_hz) < 0.05 * rate_hz for r in rates.values()), rates
        # The 20 Hz reference decides at every grid step near those windows, so each has a twin
        # within half a grid step whatever the phase of its own grid.
        ref_ends, ref_picks, ref_rates = decide(recording, classifier, hop=1, only_near=ends)
        assert all(abs(r - NATIVE_HZ) < 0.5 for r in ref_rates.values())
        twin = np.clip(np.searchsorted(ref_ends, ends), 1, len(ref_ends) - 1)
        twin -= np.abs(ref_ends[twin - 1] - ends) < np.abs(ref_ends[twin] - ends)
        matched = np.abs(ref_ends[twin] - ends) <= 0.5 / GRID_HZ + 1e-3
        assert matched.sum() >= 0.95 * len(ends) and len(ends) >= 0.9 * 7 * 20 * GRID_HZ / hop
        agree += int(np.sum(picks[matched] == ref_picks[twin[matched]]))
        total += int(matched.sum())
    agreement = agree / total
    print(f"{classifier.name}: {rate_hz} Hz agrees with native 20 Hz on {agreement:.1%} of {total} windows")
    assert agreement >= MIN_AGREEMENT[rate_hz], f"{rate_hz} Hz: {agreement:.1%} agreement"


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
