"""Samples no watch can produce (NaN, infinite, far beyond any IMU's range) never reach the model or a payload:
the windows around them are dropped as at a gap, and every decision elsewhere is the one a gap would give."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from l2mu.agent.bench.stream_accuracy import MemorySource
from l2mu.agent.daemon import Agent, NullSink
from l2mu.agent.events import Sample, StreamGap
from l2mu.agent.mqtt import encode
from l2mu.agent.pipeline import StreamAligner, valid_sample
from l2mu.agent.recording import recording_from_wisdm
from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
from l2mu.agent.settings import SENSOR_LIMITS

NAN, INF = float("nan"), float("inf")


def strict_json(text: str) -> dict:
    def refuse(name: str) -> float:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def clean(wisdm_root: Path) -> list[Sample]:
    return recording_from_wisdm(wisdm_root, 1600, "FQ", seconds=15)


def corrupt(samples: list[Sample]) -> tuple[list[Sample | StreamGap], list[Sample | StreamGap], list[float]]:
    """(the stream with bad samples, the same stream with each bad sample replaced by a reported gap, bad times)."""
    bad_at = {}
    acc = [i for i, s in enumerate(samples) if s.sensor == "acc"]
    gyro = [i for i, s in enumerate(samples) if s.sensor == "gyro"]
    t0 = samples[0].t
    first = next(i for i in acc if samples[i].t - t0 > 7)
    bad_at[first] = (NAN, 0.0, 9.8)
    bad_at[next(i for i in gyro if samples[i].t - t0 > 14)] = (0.0, -INF, 0.0)
    third = next(i for i in acc if samples[i].t - t0 > 21)
    bad_at[third] = (1e30, 0.0, 0.0)  # two in a row: one episode
    bad_at[next(i for i in acc if i > third)] = (0.0, -1e30, 0.0)
    bad, gapped, times = [], [], []
    for i, s in enumerate(samples):
        if i in bad_at:
            bad.append(Sample(s.t, s.sensor, bad_at[i], s.label))
            gapped.append(StreamGap(s.sensor, "removed"))
            times.append(s.t)
        else:
            bad.append(s)
            gapped.append(s)
    return bad, gapped, times


def run(events: list[Sample | StreamGap], clf: ExecuTorchClassifier, inference: str = "step") -> tuple[list, Agent]:
    out: list[dict] = []
    samples = [e for e in events if isinstance(e, Sample)]
    agent = Agent([MemorySource(samples)], clf, NullSink(), 1.0, on_decision=lambda p, _t: out.append(p),
                  smoothing="none", inference=inference)
    session = agent.sessions[0]
    session.wall0, session.t0 = 0.0, 0.0  # window times in the payload are the recording's own
    for e in events:
        if isinstance(e, StreamGap):
            session.aligner.mark_gap(e.sensor)
        else:
            agent.handle_sample(session, e)
    return out, agent


@pytest.fixture(scope="module")
def classifier() -> ExecuTorchClassifier:
    return ExecuTorchClassifier(resolve_model("hand8-acc-gyro"))


def test_limits_are_twice_the_widest_imu_ranges() -> None:
    assert SENSOR_LIMITS["acc"] == pytest.approx(2 * 16 * 9.80665)
    assert SENSOR_LIMITS["gyro"] == pytest.approx(2 * 2000 * math.pi / 180)
    assert valid_sample("acc", 0.0, (16 * 9.81, -16 * 9.81, 0.0))  # a watch at full scale is real
    assert valid_sample("gyro", 0.0, (34.9, 0.0, -34.9))
    for t, xyz in ((0.0, (NAN, 0, 0)), (0.0, (0, INF, 0)), (0.0, (0, 0, -INF)), (0.0, (1e30, 0, 0)),
                   (0.0, (400.0, 0, 0)), (NAN, (0, 0, 0)), (INF, (0, 0, 0))):
        assert not valid_sample("acc", t, xyz)
    assert not valid_sample("gyro", 0.0, (0.0, 80.0, 0.0))


def test_aligner_drops_invalid_samples_as_reported_gaps(clean: list[Sample]) -> None:
    bad, gapped, times = corrupt(clean)

    def grid(events: list) -> tuple[list, StreamAligner]:
        aligner, out = StreamAligner(["acc", "gyro"], 20.0), []
        for e in events:
            if isinstance(e, StreamGap):
                aligner.mark_gap(e.sensor)
            else:
                out += aligner.push(e.sensor, e.t, e.xyz)[0]
        return out, aligner

    (got, aligner), (want, _) = grid(bad), grid(gapped)
    assert [g.t for g in got] == [g.t for g in want]
    np.testing.assert_array_equal(np.stack([g.values for g in got]), np.stack([g.values for g in want]))
    assert np.isfinite(np.stack([g.values for g in got])).all()
    c = aligner.counters
    assert (c.samples_invalid, c.invalid_episodes, c.gaps, c.gaps_reported) == (4, 3, 3, 0)


@pytest.mark.parametrize("inference", ["step", "window"])
def test_decisions_around_bad_samples_are_dropped_and_the_rest_equal_a_gap(
        clean: list[Sample], classifier: ExecuTorchClassifier, inference: str,
        caplog: pytest.LogCaptureFixture) -> None:
    bad, gapped, times = corrupt(clean)
    with caplog.at_level(logging.WARNING, logger="l2mu.agent.daemon"):
        got, agent = run(bad, classifier, inference)
    want, _ = run(gapped, classifier, inference)
    everything, _ = run(clean, classifier, inference)
    assert got == want  # identical decisions, windows and scores to a stream with gaps there
    assert len(everything) > len(got) > 20
    for p in got:
        strict_json(encode(p))
        assert not any(p["window_start"] <= t <= p["window_end"] for t in times)
    # Before the first bad sample nothing changed; after the last one decisions come again.
    before = [p for p in everything if p["window_end"] < times[0]]
    assert got[: len(before)] == before
    assert got[-1]["window_start"] > times[-1]
    assert [p["seq"] for p in got] == list(range(len(got)))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, [r.getMessage() for r in warnings]  # one per episode, not per sample
    assert all("no watch can produce" in r.getMessage() for r in warnings)
    assert agent.sessions[0].aligner.counters.samples_invalid == 4


def test_payload_encoder_refuses_non_finite_numbers() -> None:
    assert strict_json(encode({"confidence": 0.5})) == {"confidence": 0.5}
    for value in (NAN, INF, -INF):
        with pytest.raises(ValueError):
            encode({"confidence": value})
