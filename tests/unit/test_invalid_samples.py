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


def test_a_polar_watchs_absurd_float_gyro_values_are_dropped_at_the_pipeline() -> None:
    """Polar's compressed GYRO type 1 frames carry IEEE float32 values. The driver drops a frame holding NaN or
    infinity itself; finite but impossible values (1e30, 5000 °/s) it passes on, and the pipeline drops them."""
    import struct

    from l2mu.agent.intake import NotificationFeed
    from l2mu.firmware_bridge.polar_pmd import (
        PMD_DATA,
        MeasurementType,
        PolarPmdDriver,
        encode_acc_frame,
        encode_delta_frames,
        encode_frame,
    )

    def f32_bits(v: float) -> int:
        return struct.unpack("<i", struct.pack("<f", v))[0]

    aligner = StreamAligner(["acc", "gyro"], 20.0)
    grid, delivered = [], []

    def deliver(s: Sample) -> None:
        delivered.append(s)
        grid.extend(aligner.push(s.sensor, s.t, s.xyz)[0])

    feed = NotificationFeed(PolarPmdDriver(), deliver, "polar", on_gap=aligner.mark_gap)
    per_frame, rate = 10, 52.0
    bad = {20: NAN, 35: INF, 45: 1e30, 52: 5000.0}  # frame → its 5th sample's x, in °/s
    for k in range(75):
        t_ns = 10**17 + round((k + 1) * per_frame / rate * 1e9)
        acc = [(10 * i, -5 * i, 1000) for i in range(per_frame)]  # mG
        gyro = [[f32_bits(1.0 + 0.1 * i), f32_bits(-2.0), f32_bits(0.5)] for i in range(per_frame)]
        if k in bad:
            gyro[4][0] = f32_bits(bad[k])
        feed.on_notification(PMD_DATA, encode_acc_frame(t_ns, acc), 0.0)
        feed.on_notification(PMD_DATA, encode_frame(MeasurementType.GYRO, t_ns, 1, True,
                                                     encode_delta_frames(gyro, 32)), 0.0)
    assert feed.decode_errors == {"non-finite sample value": 2}  # the NaN and inf frames, whole
    bad_samples = [s for s in delivered if s.sensor == "gyro" and not all(abs(v) < 60 for v in s.xyz)]
    assert [s.xyz[0] for s in bad_samples] == pytest.approx([1e30 * math.pi / 180, 5000 * math.pi / 180])
    c = aligner.counters
    assert (c.samples_invalid, c.invalid_episodes) == (2, 2)
    values = np.stack([g.values for g in grid])
    assert np.isfinite(values).all() and np.abs(values).max() < 20
    times = np.array([g.t for g in grid])
    for s in bad_samples:  # no grid time was read across a bad sample
        before = max(x.t for x in delivered if x.sensor == "gyro" and x.t < s.t)
        after = min(x.t for x in delivered if x.sensor == "gyro" and x.t > s.t)
        assert not np.any((times > before) & (times < after))
    assert times[-1] > bad_samples[-1].t + 1  # and the stream goes on
