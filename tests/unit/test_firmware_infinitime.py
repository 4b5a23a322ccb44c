"""InfiniTime Motion Service decoder (facts: InfiniTime doc/MotionService.md)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2mu.firmware_bridge.driver import STANDARD_GRAVITY, DecodeError
from l2mu.firmware_bridge.infinitime import (
    MOTION_SERVICE,
    MOTION_VALUES_CHAR,
    STEP_COUNT_CHAR,
    InfiniTimeDriver,
    encode_motion_values,
    parse_motion_values,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_uuids_from_the_doc() -> None:
    # doc/MotionService.md: service 00030000-…, raw motion values 00030002-…
    assert MOTION_SERVICE == "00030000-78fc-48fe-8e23-433b3a1942d0"
    assert MOTION_VALUES_CHAR == "00030002-78fc-48fe-8e23-433b3a1942d0"
    driver = InfiniTimeDriver()
    assert driver.notify_uuids == (MOTION_VALUES_CHAR,)
    assert driver.start_commands() == [] and driver.stop_commands() == []
    assert driver.sensors == ("acc",) and driver.native_rate_hz == 10.0


def test_one_g_is_1024() -> None:
    # "binary milli-g": x = 1 g, y = 0, z = -1 g
    (sample,) = InfiniTimeDriver().decode(MOTION_VALUES_CHAR, bytes.fromhex("0004000000fc"), 42.0)
    assert sample.t == 42.0
    assert sample.xyz == pytest.approx((STANDARD_GRAVITY, 0.0, -STANDARD_GRAVITY))


def test_timestamps_come_from_received_at_and_never_go_back() -> None:
    driver = InfiniTimeDriver()
    data = encode_motion_values((0.0, 0.0, STANDARD_GRAVITY))
    times = [driver.decode(MOTION_VALUES_CHAR, data, t)[0].t for t in (10.0, 10.1, 10.05, 10.2)]
    assert times == [10.0, 10.1, 10.1, 10.2]  # a late-delivered callback is clamped


def test_step_count_is_ignored_and_bad_lengths_refused() -> None:
    driver = InfiniTimeDriver()
    assert driver.decode(STEP_COUNT_CHAR, b"\x10\x00\x00\x00", 1.0) == []
    for bad in (b"", b"\x00" * 5, b"\x00" * 7):
        with pytest.raises(DecodeError):
            driver.decode(MOTION_VALUES_CHAR, bad, 1.0)
    with pytest.raises(DecodeError):
        driver.decode("00002a37-0000-1000-8000-00805f9b34fb", b"\x00" * 6, 1.0)
    with pytest.raises(DecodeError):
        driver.decode("not a uuid", b"\x00" * 6, 1.0)


@FUZZ
@given(st.tuples(*[st.floats(-30 * STANDARD_GRAVITY, 30 * STANDARD_GRAVITY)] * 3))
def test_round_trip(xyz: tuple[float, float, float]) -> None:
    data = encode_motion_values(xyz)
    (sample,) = InfiniTimeDriver().decode(MOTION_VALUES_CHAR, data, 0.0)
    assert sample.xyz == pytest.approx(xyz, abs=STANDARD_GRAVITY / 1024 / 2 + 1e-9)
    assert parse_motion_values(data) == tuple(round(v / STANDARD_GRAVITY * 1024) for v in xyz)


@FUZZ
@given(st.binary(max_size=16), st.sampled_from([MOTION_VALUES_CHAR, STEP_COUNT_CHAR]), st.floats(-1e9, 1e9))
def test_fuzz_any_bytes(data: bytes, uuid: str, received_at: float) -> None:
    try:
        samples = InfiniTimeDriver().decode(uuid, data, received_at)
    except DecodeError:
        return
    assert len(samples) <= 1
    assert all(math.isfinite(v) for s in samples for v in (s.t, *s.xyz))
