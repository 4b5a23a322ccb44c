"""The shared driver interface: registry, auto-selection, and the contract every driver keeps."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2mu.firmware_bridge.driver import (
    DecodeError,
    GattWrite,
    ImuSample,
    Timeline,
    UnknownDriverError,
    WatchDriver,
    driver_by_name,
    driver_names,
    normalize_uuid,
    pick_driver,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


NAMES = ["bangle", "infinitime", "l2mu", "metawear", "polar"]


def test_registry_knows_every_family() -> None:
    assert driver_names() == NAMES
    for name in NAMES:
        assert driver_by_name(name).name == name
    assert driver_by_name(" Polar ").name == "polar"
    with pytest.raises(UnknownDriverError):
        driver_by_name("garmin")
    assert issubclass(UnknownDriverError, LookupError)


@pytest.mark.parametrize(
    ("services", "name"),
    [
        (["0000180a-0000-1000-8000-00805f9b34fb", "FB005C80-02E7-F387-1CAD-8ACD2D8DF0C8"], "polar"),
        (["00030000-78fc-48fe-8e23-433b3a1942d0", "180d"], "infinitime"),
        (["326a9000-85cb-9195-d9dd-464cfbbae75a"], "metawear"),
        (["296a0001-e233-43a0-bd2e-ecb4574ec67f"], "l2mu"),
        (["296a0001-e233-43a0-bd2e-ecb4574ec67f", "6e400001-b5a3-f393-e0a9-e50e24dcca9e"], "bangle"),
    ],
)
def test_pick_driver(services: list[str], name: str) -> None:
    assert pick_driver(services).name == name


def test_pick_driver_without_a_match() -> None:
    with pytest.raises(UnknownDriverError):
        pick_driver(["180d", "180f"])
    with pytest.raises(UnknownDriverError):
        pick_driver([])


def test_normalize_uuid() -> None:
    assert normalize_uuid("180D") == "0000180d-0000-1000-8000-00805f9b34fb"
    assert normalize_uuid("0x2a37") == "00002a37-0000-1000-8000-00805f9b34fb"
    assert normalize_uuid("FB005C80-02E7-F387-1CAD-8ACD2D8DF0C8") == "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
    with pytest.raises(ValueError):
        normalize_uuid("nope")


@pytest.mark.parametrize("name", NAMES)
def test_every_driver_keeps_the_contract(name: str) -> None:
    cls = driver_by_name(name)
    driver = cls()
    assert isinstance(driver, WatchDriver)
    assert driver.sensors and set(driver.sensors) <= {"acc", "gyro"}
    assert driver.native_rate_hz > 0
    assert cls.service_uuids and cls.notify_uuids
    assert set(cls.response_uuids) <= set(cls.notify_uuids)
    for uuid in (*cls.service_uuids, *cls.notify_uuids):
        assert normalize_uuid(uuid) == uuid
    for writes in (driver.prepare_commands(), driver.start_commands(), driver.stop_commands()):
        for write in writes:
            assert isinstance(write, GattWrite) and isinstance(write.data, bytes) and write.data
            uuid, data = write  # a plain (characteristic, bytes) pair
            assert normalize_uuid(uuid) == uuid and data == write.data
    with pytest.raises(DecodeError):
        driver.decode(cls.notify_uuids[0], b"\x00", math.nan)
    with pytest.raises(DecodeError):
        driver.decode("0000ffff-0000-1000-8000-00805f9b34fb", b"\x00" * 20, 0.0)
    driver.reset()


def test_samples_and_errors() -> None:
    sample = ImuSample(1.0, "acc", (0.0, 0.0, 9.8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.t = 2.0  # type: ignore[misc]
    error = DecodeError("PMD command refused", status="ERROR_INVALID_STATE")
    assert isinstance(error, ValueError)
    assert (error.reason, error.status) == ("PMD command refused", "ERROR_INVALID_STATE")
    assert "ERROR_INVALID_STATE" in str(error)


def test_timeline_clamps_jitter_and_re_anchors_jumps() -> None:
    timeline = Timeline(jump_s=1.0)
    assert timeline.place([10.0, 10.1], 0.1) == [10.0, 10.1]
    assert timeline.place([10.05, 10.2], 0.1) == [10.1, 10.2]  # overlap: clamped
    assert timeline.place([3.0, 3.1], 0.1) == pytest.approx([10.3, 10.4])  # clock set back
    assert timeline.jumps == 1
    assert timeline.place([3.2], 0.1) == pytest.approx([10.5])  # the new anchor holds
    timeline.reset()
    assert timeline.place([1.0], 0.1) == [1.0]


@FUZZ
@given(st.sampled_from(NAMES), st.data())
def test_fuzz_every_driver_on_every_characteristic(name: str, data: st.DataObject) -> None:
    cls = driver_by_name(name)
    driver = cls()
    per_sensor: dict[str, list[float]] = {}
    for _ in range(data.draw(st.integers(1, 6))):
        uuid = data.draw(st.sampled_from(cls.notify_uuids))
        payload = data.draw(st.binary(max_size=160))
        received_at = data.draw(st.floats(0, 1e10))
        began = time.perf_counter()
        try:
            samples = driver.decode(uuid, payload, received_at)
        except DecodeError:
            samples = []
        assert time.perf_counter() - began < 2.0
        for s in samples:
            assert isinstance(s, ImuSample) and s.sensor in ("acc", "gyro")
            assert math.isfinite(s.t) and all(math.isfinite(v) for v in s.xyz)
            per_sensor.setdefault(s.sensor, []).append(s.t)
        assert [s.t for s in samples] == sorted(s.t for s in samples)
    assert all(t == sorted(t) for t in per_sensor.values())


@FUZZ
@given(st.sampled_from(NAMES), st.binary(max_size=64))
def test_fuzz_parse_response(name: str, payload: bytes) -> None:
    driver = driver_by_name(name)()
    with contextlib.suppress(DecodeError):
        driver.parse_response(payload)
