"""Resampling end to end: a recording at a watch's native rate still gives decisions through `run`."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from l2mu.agent.events import Sample
from l2mu.agent.pipeline import StreamAligner, Windower, normalise
from l2mu.agent.recording import recording_from_wisdm
from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
from l2mu.model.metadata import ModelFileError
from l2mu.model.splits import TEST_SUBJECTS
from l2mu.model.timegrid import gap_free_runs
from l2mu.model.wisdm import HAND7
from tests.support.resample import GRID_HZ

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
