"""Notification bytes → driver → pipeline: bad frames are counted, never escape, never reorder time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from l2mu.agent.events import Sample
from l2mu.agent.intake import NotificationFeed
from l2mu.agent.pipeline import StreamAligner
from l2mu.agent.recording import recording_from_wisdm
from l2mu.firmware_bridge.driver import driver_by_name, driver_names
from l2mu.firmware_bridge.l2mu_profile import L2MU_IMU_CHAR, L2muDriver, L2muEncoder
from l2mu.model.timegrid import align_streams


def wisdm_as_l2mu_packets(root: Path) -> tuple[list[bytes], list[Sample]]:
    """A real wearer's watch data, resampled to exactly 20 Hz and packed as the L2MU profile does."""
    raw = recording_from_wisdm(root, 1600, "FR", seconds=15)
    streams = []
    for sensor in ("acc", "gyro"):
        mine = [s for s in raw if s.sensor == sensor]
        streams.append((np.array([s.t for s in mine]), np.array([s.xyz for s in mine])))
    ((grid, values),) = align_streams(streams, 20.0)[:1]
    enc = L2muEncoder(20.0, acc_range_g=8, gyro_range_dps=500, max_samples=8)
    return enc.packets(float(grid[0]), values[:, :3].tolist(), values[:, 3:].tolist()), raw


def run_feed(
    packets: list[bytes], garbage_every: int = 0, aligner: StreamAligner | None = None
) -> tuple[NotificationFeed, list, list[Sample]]:
    aligner = aligner or StreamAligner(["acc", "gyro"], 20.0)
    grid, delivered = [], []

    def deliver(s: Sample) -> None:
        delivered.append(s)
        grid.extend(aligner.push(s.sensor, s.t, s.xyz)[0])

    feed = NotificationFeed(L2muDriver(rate_hz=20.0), deliver, "test", on_gap=aligner.mark_gap)
    for i, packet in enumerate(packets):
        if garbage_every and i % garbage_every == 0:
            feed.on_notification(L2MU_IMU_CHAR, b"\x07" + b"g" * 20, 1.0)
            feed.on_notification(L2MU_IMU_CHAR, packet[:5], 1.0)
        feed.on_notification(L2MU_IMU_CHAR, packet, 1.0)
    return feed, grid, delivered


def test_real_data_through_the_l2mu_profile_reaches_the_grid_intact(wisdm_root: Path) -> None:
    packets, _ = wisdm_as_l2mu_packets(wisdm_root)
    feed, grid, _ = run_feed(packets)
    assert feed.errors_total == 0 and feed.samples > 1000
    assert len(grid) > 500
    values = np.stack([g.values for g in grid])
    # int16 at ±8 g / ±500 °/s: quantisation well under 0.01 m/s² and 0.001 rad/s
    assert np.abs(np.linalg.norm(values[:, :3], axis=1).mean() - 9.8) < 1.0


def test_garbage_frames_are_counted_and_change_nothing_downstream(wisdm_root: Path) -> None:
    packets, _ = wisdm_as_l2mu_packets(wisdm_root)
    _, clean_grid, _ = run_feed(packets)
    feed, grid, _ = run_feed(packets, garbage_every=5)
    assert feed.errors_total == 2 * len(range(0, len(packets), 5))
    assert set(feed.decode_errors) >= {"unsupported L2MU profile version", "L2MU packet shorter than its header"}
    np.testing.assert_array_equal(np.stack([g.values for g in grid]), np.stack([g.values for g in clean_grid]))


def test_lost_packets_restart_the_grid_instead_of_interpolating_over_them(wisdm_root: Path) -> None:
    packets, _ = wisdm_as_l2mu_packets(wisdm_root)
    aligner = StreamAligner(["acc", "gyro"], 20.0)
    # Drop one packet (8 samples, 0.4 s): the driver learns it from the sequence number.
    feed, grid, _ = run_feed(packets[:30] + packets[31:], aligner=aligner)
    assert feed.driver.gaps == 1
    assert aligner.counters.gaps >= 1
    times = np.array([g.t for g in grid])
    lost = (float(times[0]) + 30 * 8 * 0.05, float(times[0]) + 31 * 8 * 0.05)
    assert not np.any((times > lost[0] + 0.05) & (times < lost[1] - 0.05))


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(driver_names())), frames=st.lists(st.binary(max_size=300), max_size=12))
def test_any_bytes_into_any_driver_never_escape_and_never_reverse_time(name: str, frames: list[bytes]) -> None:
    driver = driver_by_name(name)()
    delivered: list[Sample] = []
    feed = NotificationFeed(driver, delivered.append, "fuzz")
    for i, frame in enumerate(frames):
        for uuid in driver.notify_uuids:
            feed.on_notification(uuid, frame, 1000.0 + i)
    assert feed.notifications == len(frames) * len(driver.notify_uuids)
    assert feed.samples == len(delivered)
    for sensor in ("acc", "gyro"):
        times = [s.t for s in delivered if s.sensor == sensor]
        assert times == sorted(times)
    assert all(np.isfinite(s.xyz).all() for s in delivered)


def test_a_gap_after_the_driver_was_reset_for_a_reconnect_is_still_reported(wisdm_root: Path) -> None:
    packets, _ = wisdm_as_l2mu_packets(wisdm_root)
    marked: list[str] = []
    feed = NotificationFeed(L2muDriver(rate_hz=20.0), lambda s: None, "test", on_gap=marked.append)
    for packet in packets[:10] + packets[13:20]:  # 3 packets lost on the first connection
        feed.on_notification(L2MU_IMU_CHAR, packet, 1.0)
    assert len(marked) == 2  # once per sensor
    feed.driver.reset()  # a new connection: the driver's sequence count starts again
    for packet in packets[30:35] + packets[36:40]:  # 1 lost: fewer than the first connection's 3
        feed.on_notification(L2MU_IMU_CHAR, packet, 1.0)
    assert feed.driver.gaps == 1 and len(marked) == 4
