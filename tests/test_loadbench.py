"""Virtual watches, the bounded intake and `bench load`: every protocol's bytes carry the recording intact, overload
shows as counted drops (never as a growing backlog), and the benchmark reports what it measured."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from l2mu.agent.events import Sample, StreamGap
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
from l2mu.firmware_bridge.l2mu_profile import L2MU_IMU_CHAR, L2muDriver, L2muEncoder

from .conftest import cli_command

# int16 at each family's range: ±8 g (Polar in mg) and ±2000 °/s (Polar's 0.061 °/s per count) at worst.
TOLERANCE = {"acc": 0.006, "gyro": 0.0006}


@pytest.fixture(scope="module")
def signal() -> Signal:
    return Signal.from_file(demo_recording())  # a real WISDM wearer


def drain(source: NotificationSource) -> list:
    async def take() -> list:
        source.close()
        return [item async for item in source.stream()]

    return asyncio.run(take())


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


def l2mu_packets(n: int, per: int = 4) -> list[bytes]:
    enc = L2muEncoder(25.0, acc_range_g=8, gyro_range_dps=2000, max_samples=per)
    rows = [[0.1 * i, 9.8, 0.0] for i in range(n)]
    return enc.packets(10.0, rows, [[0.0, 0.0, 0.01 * i] for i in range(n)])


def test_a_full_intake_sheds_the_oldest_samples_counts_them_and_marks_a_gap(caplog: pytest.LogCaptureFixture) -> None:
    source = NotificationSource("w", L2muDriver(), max_queue=10, max_age_s=1e9)
    with caplog.at_level(logging.WARNING):
        for packet in l2mu_packets(12):  # 24 samples (acc + gyro) into room for 10
            source.on_notification(L2MU_IMU_CHAR, packet)
    assert source.dropped_overflow == 14 and source.queued == 10
    items = drain(source)
    assert isinstance(items[0], StreamGap) and items[0].reason == "samples shed"
    assert [s.t for s in items[1:]] == sorted(s.t for s in items[1:]) and len(items) == 11
    shed = [r for r in caplog.records if "not keeping up" in r.getMessage()]
    assert len(shed) == 1  # one line; the rest only counted


def test_samples_that_waited_too_long_are_shed_not_processed() -> None:
    source = NotificationSource("w", L2muDriver(), max_age_s=0.5)
    packets = l2mu_packets(32)  # 8 packets of 4 samples
    for packet in packets[:2]:
        source.on_notification(L2MU_IMU_CHAR, packet, arrived=time.monotonic() - 2.0)  # stuck behind a busy loop
    for packet in packets[2:]:
        source.on_notification(L2MU_IMU_CHAR, packet)
    items = drain(source)
    assert source.dropped_stale == 16
    assert isinstance(items[0], StreamGap)
    assert sum(isinstance(i, Sample) for i in items) == 48


def test_a_link_drop_is_one_log_line_and_a_gap_for_each_sensor(caplog: pytest.LogCaptureFixture) -> None:
    source = NotificationSource("w", L2muDriver())
    with caplog.at_level(logging.INFO):
        source.on_notification(L2MU_IMU_CHAR, l2mu_packets(4)[0])
        source.link_lost("link lost (test)")
        source.link_restored()
    items = drain(source)
    gaps = [i for i in items if isinstance(i, StreamGap)]
    assert [g.sensor for g in gaps] == ["acc", "gyro"] and source.link_drops == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "w: link lost (test)" in warnings[0].getMessage()


def test_histogram_percentiles() -> None:
    h = Histogram()
    for ms in range(1, 101):
        h.add(ms / 1000)
    assert h.percentile_ms(50) == pytest.approx(50.1, abs=0.11)
    assert h.percentile_ms(99) == pytest.approx(99.1, abs=0.11)
    assert h.percentile_ms(100) == 100.0 and Histogram().percentile_ms(50) is None


def test_bench_load_command_reports_every_count(tiny_program: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "load.json", tmp_path / "load.png"
    proc = subprocess.run([*cli_command(), "bench", "load", "--watches", "1", "--watches", "3", "--seconds", "6",
                           "--model", str(tiny_program), "--json", "--out", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert [r["watches"] for r in result["results"]] == [1, 3]
    for r in result["results"]:
        assert r["decisions"] >= 3 * r["watches"] and r["decisions_lost"] == 0 and r["acked_out_of_order"] == 0
        assert r["samples_dropped"] == 0 and r["samples_received"] > 0 and r["rss_mb"] > 0
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"] <= r["latency_ms_max"]
    assert result["transport"].startswith("in-process notifications") and "PUBACK" in result["latency"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["--watches", "0"], "--watches: 0 is not a number of watches ≥ 1"),
    (["--watches", "8", "--mix", "polar@52,fitbit@20"], "protocol must be one of"),
    (["--watches", "8", "--mix", "bangle@25"], "no watch kind in bangle@25 streams acc+gyro"),
])
def test_bench_load_bad_options_are_one_line_errors(args: list[str], message: str, tiny_program: Path) -> None:
    proc = subprocess.run([*cli_command(), "bench", "load", *args, "--model", str(tiny_program)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr
