"""The bounded intake: overflow and stale samples are shed, counted and reported as gaps."""

from __future__ import annotations

import logging
import time

import pytest

from l2mu.agent.events import Sample, StreamGap
from l2mu.agent.intake import NotificationSource
from l2mu.firmware_bridge.l2mu_profile import L2MU_IMU_CHAR, L2muDriver, L2muEncoder
from tests.support.intake import drain


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
