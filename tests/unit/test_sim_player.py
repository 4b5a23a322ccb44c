"""Virtual watches in process: each protocol's notifications decode back to the recording; kinds, mixes, histogram."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from l2mu.agent.events import Sample
from l2mu.agent.sim.player import DEFAULT_MIX, Histogram, Player, WatchKind, WatchSpecError, build_watches, mix_for
from l2mu.agent.sim.watches import MotionTape
from l2mu.agent.sources import demo_recording
from tests.support.intake import drain

# int16 at each family's range: ±8 g (Polar in mg) and ±2000 °/s (Polar's 0.061 °/s per count) at worst.
TOLERANCE = {"acc": 0.006, "gyro": 0.0006}
SPEED = 20.0  # the watches' clocks run 20× real time: 10 s of streaming in half a second
SECONDS = 10.0


@pytest.fixture(scope="module")
def tape() -> MotionTape:
    return MotionTape.from_file(demo_recording())  # a real WISDM wearer


@pytest.mark.parametrize("spec", DEFAULT_MIX)
def test_each_protocols_notifications_decode_back_to_the_recording(spec: str, tape: MotionTape) -> None:
    """The firmware model the virtual BlueZ serves, in process: set up by the intake's handshake (Polar settings
    and factors, MetaWear module info, L2MU START), its notifications decode to the recording it plays."""
    kind = WatchKind.parse(spec)
    (watch,) = build_watches(1, [kind], tape, max_queue=10**6, max_age_s=1e9, speed=SPEED)
    watch.firmware.offset_s = 42.0
    watch.start_delay_s = 0.0
    asyncio.run(Player([watch], SECONDS / SPEED - 1.0).run())
    source = watch.source
    items = drain(source)
    assert source.feed.errors_total == 0 and source.dropped == 0
    for sensor in sorted(kind.sensors):
        got = [s for s in items if isinstance(s, Sample) and s.sensor == sensor]
        assert len(got) >= 0.8 * SECONDS * kind.rate_hz, sensor
        t = np.array([s.t for s in got])
        spacing = np.diff(t)
        assert np.median(spacing) == pytest.approx(1 / kind.rate_hz, rel=1e-3)
        steps = np.rint((t - t[0]) * kind.rate_hz).astype(int)  # which sampling instant each sample is
        if kind.protocol == "infinitime":
            assert (np.diff(steps) >= 1).all()  # it notifies only when the reading changed
        else:
            assert (np.diff(steps) == 1).all(), sensor  # none lost, none repeated
        values = np.array([s.xyz for s in got])
        # The first instant is wherever the watch's clock stood when streaming started: find it on the tape.
        errors = [np.abs(values - tape.at(42.0 + (k0 + steps) / kind.rate_hz)[0 if sensor == "acc" else 1]).max()
                  for k0 in range(int(2 * kind.rate_hz))]
        assert min(errors) < TOLERANCE[sensor], (sensor, min(errors))


def test_watch_kinds_and_the_mix_for_a_model() -> None:
    assert [str(k) for k in mix_for(["acc", "gyro"])] == ["polar@52", "metawear@50", "l2mu@20", "metawear@25",
                                                         "l2mu@50"]
    assert "bangle@25" in [str(k) for k in mix_for(["acc"])]
    with pytest.raises(WatchSpecError, match="InfiniTime polls its accelerometer at 10 Hz only"):
        WatchKind.parse("infinitime@50")
    with pytest.raises(WatchSpecError, match="protocol must be one of"):
        WatchKind.parse("fitbit@25")
    with pytest.raises(WatchSpecError, match="streams acc\\+gyro"):
        mix_for(["acc", "gyro"], ["bangle@25"])


def test_histogram_percentiles() -> None:
    h = Histogram()
    for ms in range(1, 101):
        h.add(ms / 1000)
    assert h.percentile_ms(50) == pytest.approx(50.1, abs=0.11)
    assert h.percentile_ms(99) == pytest.approx(99.1, abs=0.11)
    assert h.percentile_ms(100) == 100.0 and Histogram().percentile_ms(50) is None
