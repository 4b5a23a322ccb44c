"""Virtual watches in process: each protocol's notifications decode back to the recording; kinds, mixes, histogram."""

from __future__ import annotations

import numpy as np
import pytest

from l2mu.agent.events import Sample
from l2mu.agent.intake import NotificationSource
from l2mu.agent.sim.player import (
    DEFAULT_MIX,
    Histogram,
    Signal,
    VirtualWatch,
    WatchKind,
    WatchSpecError,
    make_driver,
    mix_for,
)
from l2mu.agent.sources import demo_recording
from tests.support.loadbench import drain

# int16 at each family's range: ±8 g (Polar in mg) and ±2000 °/s (Polar's 0.061 °/s per count) at worst.
TOLERANCE = {"acc": 0.006, "gyro": 0.0006}


@pytest.fixture(scope="module")
def signal() -> Signal:
    return Signal.from_file(demo_recording())  # a real WISDM wearer


@pytest.mark.parametrize("spec", DEFAULT_MIX)
def test_each_protocols_notifications_decode_back_to_the_recording(spec: str, signal: Signal) -> None:
    kind = WatchKind.parse(spec)
    watch = VirtualWatch("w", kind, signal, seconds=10, offset_s=42.0)
    source = NotificationSource("w", make_driver(kind), max_queue=10**6, max_age_s=1e9)
    watch.connect(source)  # the set-up answers (Polar settings and factors, MetaWear module info)
    for note in watch.notifications:
        source.on_notification(note.char_uuid, note.data, received_at=1e6 + note.due)
    items = drain(source)
    assert source.feed.errors_total == 0 and source.dropped == 0
    for sensor in sorted(kind.sensors):
        got = [s for s in items if isinstance(s, Sample) and s.sensor == sensor]
        assert len(got) == len(watch.times), sensor
        expected = signal.read(42.0 + watch.times, sensor)
        assert np.abs(np.array([s.xyz for s in got]) - expected).max() < TOLERANCE[sensor]
        spacing = np.diff([s.t for s in got])
        assert np.median(spacing) == pytest.approx(1 / kind.rate_hz, rel=1e-3)


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
