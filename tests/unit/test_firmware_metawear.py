"""MetaWear decoder: MbientLab's own SDK test vectors, then round trips and fuzzing.

Vectors are ported from github.com/mbientlab/MetaWear-SDK-Cpp (snapshot at commit
f67699e): test/test_accelerometer_bmi160.py, test/test_accelerometer_bmi270.py,
test/test_gyro_bmi160.py and the module-info answers of test/common.py. Their float
comparisons use cbindings.is_close (0.1 % relative, 0.001 absolute); so do these."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2mu.firmware_bridge.driver import DEG_TO_RAD, STANDARD_GRAVITY, DecodeError
from l2mu.firmware_bridge.metawear import (
    ACC_ODRS_HZ,
    ACC_RANGES_G,
    GYRO_LSB_PER_DPS,
    GYRO_RANGES_DPS,
    METAWEAR_COMMAND_CHAR,
    METAWEAR_NOTIFY_CHAR,
    MODULE_ACCELEROMETER,
    MODULE_GYRO,
    MetaWearDriver,
    acc_config,
    encode_notification,
    gyro_config,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def is_close(fst: float, snd: float) -> bool:
    """cbindings.is_close of the MetaWear Python bindings."""
    return abs(fst - snd) <= max(0.001 * max(abs(fst), abs(snd)), 0.001)


def in_g(xyz: tuple[float, float, float]) -> list[float]:
    return [v / STANDARD_GRAVITY for v in xyz]


def in_dps(xyz: tuple[float, float, float]) -> list[float]:
    return [v / DEG_TO_RAD for v in xyz]


def commands(driver: MetaWearDriver) -> list[list[int]]:
    writes = driver.start_commands()
    assert all(w.char_uuid == METAWEAR_COMMAND_CHAR for w in writes)
    return [list(w.data) for w in writes]


BMI160_ODR_BYTES = [0x81, 0x82, 0x83, 0x84, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A, 0x2B, 0x2C]


BMI270_ODR_BYTES = [0x21, 0x22, 0x23, 0x24, 0xA5, 0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAC]


@pytest.mark.parametrize(("rate", "byte"), list(zip(ACC_ODRS_HZ, BMI160_ODR_BYTES, strict=True)))
def test_sdk_bmi160_set_odr(rate: float, byte: int) -> None:
    # expected [0x03, 0x03, odr byte, 0x03]: the default range is ±2 g (bits 0x3)
    assert [MODULE_ACCELEROMETER, 0x03, *acc_config("bmi160", rate, 2)] == [0x03, 0x03, byte, 0x03]


@pytest.mark.parametrize(("rate", "byte"), list(zip(ACC_ODRS_HZ, BMI270_ODR_BYTES, strict=True)))
def test_sdk_bmi270_set_odr(rate: float, byte: int) -> None:
    # expected [0x03, 0x03, odr byte, 0x02]: the BMI270 default range is ±8 g (bits 0x2)
    assert [MODULE_ACCELEROMETER, 0x03, *acc_config("bmi270", rate, 8)] == [0x03, 0x03, byte, 0x02]


def test_sdk_acc_set_range_and_odr() -> None:
    # test_set_range (16 g at the default 100 Hz) and test_set_odr_and_range (200 Hz, 8 g)
    assert list(acc_config("bmi160", 100.0, 16)) == [0x28, 0x0C]
    assert list(acc_config("bmi160", 200.0, 8)) == [0x29, 0x08]
    assert list(acc_config("bmi270", 100.0, 16)) == [0xA8, 0x03]
    assert list(acc_config("bmi270", 200.0, 8)) == [0xA9, 0x02]


def test_sdk_gyro_config() -> None:
    # test_gyro_bmi160.py, TestGyroBmi160Config: 200 Hz; 250 deg/s; 50 Hz at 125 deg/s
    assert [MODULE_GYRO, 0x03, *gyro_config(200.0, 2000)] == [0x13, 0x3, 0x29, 0x0]
    assert [MODULE_GYRO, 0x03, *gyro_config(100.0, 250)] == [0x13, 0x03, 0x28, 0x03]
    assert [MODULE_GYRO, 0x03, *gyro_config(50.0, 125)] == [0x13, 0x03, 0x27, 0x04]


@pytest.mark.parametrize("packed", [False, True])
def test_sdk_bmi160_stream_commands(packed: bool) -> None:
    # subscribe [0x03, 0x04 | 0x1c, 1], [0x13, 0x05 | 0x07, 1]; enable [m, 2, 1, 0]; start [m, 1, 1]
    driver = MetaWearDriver("bmi160", rate_hz=200, acc_range_g=8, gyro_range_dps=2000, packed=packed)
    acc_reg, gyro_reg = (0x1C, 0x07) if packed else (0x04, 0x05)
    assert commands(driver) == [
        [0x03, 0x03, 0x29, 0x08],
        [0x13, 0x03, 0x29, 0x00],
        [0x03, acc_reg, 0x01],
        [0x13, gyro_reg, 0x01],
        [0x03, 0x02, 0x01, 0x00],
        [0x13, 0x02, 0x01, 0x00],
        [0x03, 0x01, 0x01],
        [0x13, 0x01, 0x01],
    ]
    stops = [list(w.data) for w in driver.stop_commands()]
    assert stops == [
        [0x13, 0x01, 0x00],
        [0x13, 0x02, 0x00, 0x01],
        [0x13, gyro_reg, 0x00],
        [0x03, 0x01, 0x00],
        [0x03, 0x02, 0x00, 0x01],
        [0x03, acc_reg, 0x00],
    ]


def test_sdk_bmi270_subscribe_registers() -> None:
    # TestBmi270AccelerationData / TestBmi270HighFreqAccData: [0x03, 0x04, 1] and [0x03, 0x05, 1]
    assert [0x03, 0x04, 0x01] in commands(MetaWearDriver("bmi270", packed=False))
    assert [0x03, 0x05, 0x01] in commands(MetaWearDriver("bmi270", packed=True))


@pytest.mark.parametrize("variant", ["bmi160", "bmi270"])
def test_sdk_acceleration_data(variant: str) -> None:
    # TestBmi160AccelerationData / TestBmi270AccelerationData.test_get_acceleration_data_g (±4 g)
    driver = MetaWearDriver(variant, acc_range_g=4, packed=False)  # type: ignore[arg-type]
    (sample,) = driver.decode(METAWEAR_NOTIFY_CHAR, b"\x03\x04\x16\xc4\x94\xa2\x2a\xd0", 100.0)
    assert sample.sensor == "acc" and sample.t == 100.0
    assert all(is_close(a, b) for a, b in zip(in_g(sample.xyz), (-1.872, -2.919, -1.495), strict=True))


@pytest.mark.parametrize(("variant", "register"), [("bmi160", 0x1C), ("bmi270", 0x05)])
def test_sdk_packed_acceleration_data(variant: str, register: int) -> None:
    # TestBmi160HighFreqAccData / TestBmi270HighFreqAccData.test_get_acceleration_data_g (±8 g)
    data = bytes([0x03, register]) + b"\x62\xb7\x53\x0d\xe9\xfd\x16\xd0\x4d\x0e\x57\x02\x8a\xff\xa1\x05\x0a\x01"
    driver = MetaWearDriver(variant, acc_range_g=8, rate_hz=100)  # type: ignore[arg-type]
    samples = driver.decode(METAWEAR_NOTIFY_CHAR, data, 50.0)
    expected = [(-4.539, 0.833, -0.131), (-2.995, 0.894, 0.146), (-0.029, 0.352, 0.065)]
    assert len(samples) == 3
    for sample, want in zip(samples, expected, strict=True):
        assert all(is_close(a, b) for a, b in zip(in_g(sample.xyz), want, strict=True))
    assert [s.t for s in samples] == pytest.approx([49.98, 49.99, 50.0])


def test_sdk_rotation_data() -> None:
    # TestGyroBmi160DataHandler.test_rotation_data_handler (±500 deg/s)
    driver = MetaWearDriver("bmi160", gyro_range_dps=500, packed=False)
    (sample,) = driver.decode(METAWEAR_NOTIFY_CHAR, b"\x13\x05\x3e\x43\xff\x7f\x00\x80", 7.0)
    assert sample.sensor == "gyro"
    assert all(is_close(a, b) for a, b in zip(in_dps(sample.xyz), (262.409, 499.497, -499.512), strict=True))


def test_sdk_packed_rotation_data() -> None:
    # TestGyroBmi160HighFreqDataHandler.test_rotation_data_handler (±1000 deg/s)
    data = b"\x13\x07\x09\x15\xad\x26\x08\xde\x8a\x1a\x0d\x26\x65\xe4\x8d\x20\xac\x27\x73\xec"
    driver = MetaWearDriver("bmi160", gyro_range_dps=1000)
    samples = driver.decode(METAWEAR_NOTIFY_CHAR, data, 7.0)
    expected = [(164.177, 301.860, -265.122), (207.134, 296.982, -215.457), (254.055, 309.634, -152.591)]
    for sample, want in zip(samples, expected, strict=True):
        assert all(is_close(a, b) for a, b in zip(in_dps(sample.xyz), want, strict=True))


def test_sdk_module_info_selects_the_variant() -> None:
    driver = MetaWearDriver("bmi160")
    assert [list(w.data) for w in driver.prepare_commands()] == [[0x03, 0x80], [0x13, 0x80]]
    # METAWEAR_MOTION_S_BOARD: accelerometer implementation 4, gyro implementation 1 (BMI270)
    driver.decode(METAWEAR_NOTIFY_CHAR, b"\x03\x80\x04\x00", 0.0)
    driver.decode(METAWEAR_NOTIFY_CHAR, b"\x13\x80\x01\x00", 0.0)
    assert driver.variant == "bmi270" and driver.packed
    assert [0x03, 0x05, 0x01] in commands(driver)
    # METAWEAR_MOTION_R_BOARD: implementation 1 revision 1 (BMI160 with packed data)
    driver.parse_response(b"\x03\x80\x01\x01")
    driver.parse_response(b"\x13\x80\x00\x01")
    assert driver.variant == "bmi160" and driver.packed
    assert driver.sensors == ("acc", "gyro")


def test_module_info_without_gyro_or_packed_support() -> None:
    driver = MetaWearDriver("bmi160")
    driver.parse_response(b"\x03\x80\x01\x00")  # revision 0: no packed registers
    driver.parse_response(b"\x13\x80")  # module absent
    assert not driver.packed
    assert driver.sensors == ("acc",)
    assert all(w.data[0] == MODULE_ACCELEROMETER for w in driver.start_commands())
    with pytest.raises(DecodeError):
        driver.parse_response(b"\x03\x80\x03\x01")  # a BMA255 board: not supported


def test_config_read_updates_the_range() -> None:
    driver = MetaWearDriver("bmi160", acc_range_g=2, packed=False)
    driver.decode(METAWEAR_NOTIFY_CHAR, b"\x03\x83\x28\x0c", 0.0)  # 100 Hz, ±16 g
    assert driver.acc_range_g == 16
    (sample,) = driver.decode(METAWEAR_NOTIFY_CHAR, encode_notification(0x03, 0x04, [(2048, 0, 0)]), 1.0)
    assert sample.xyz[0] == pytest.approx(STANDARD_GRAVITY)


def test_other_modules_are_ignored() -> None:
    driver = MetaWearDriver()
    assert driver.decode(METAWEAR_NOTIFY_CHAR, b"\x01\x01\x01", 0.0) == []  # the button
    with pytest.raises(DecodeError):
        driver.decode(METAWEAR_NOTIFY_CHAR, b"\x03", 0.0)
    with pytest.raises(DecodeError):
        driver.decode(METAWEAR_NOTIFY_CHAR, b"\x03\x04\x01\x02\x03", 0.0)  # not a whole sample


int16 = st.integers(-32768, 32767)


xyz16 = st.tuples(int16, int16, int16)


@FUZZ
@given(
    st.sampled_from(["bmi160", "bmi270"]),
    st.sampled_from(ACC_RANGES_G),
    st.sampled_from(GYRO_RANGES_DPS),
    st.lists(xyz16, min_size=1, max_size=3),
    st.booleans(),
)
def test_round_trip(variant: str, range_g: int, range_dps: int, rows: list[tuple[int, int, int]], packed: bool) -> None:
    driver = MetaWearDriver(variant, acc_range_g=range_g, gyro_range_dps=range_dps, packed=packed)  # type: ignore[arg-type]
    regs = driver.registers
    rows = rows if packed else rows[:1]
    acc = driver.decode(
        METAWEAR_NOTIFY_CHAR, encode_notification(0x03, regs.acc_packed if packed else regs.acc_data, rows), 10.0
    )
    gyro = driver.decode(
        METAWEAR_NOTIFY_CHAR, encode_notification(0x13, regs.gyro_packed if packed else regs.gyro_data, rows), 10.0
    )
    lsb_g = 32768 / range_g
    for sample, raw in zip(acc, rows, strict=True):
        assert in_g(sample.xyz) == pytest.approx([v / lsb_g for v in raw], rel=1e-9, abs=1e-12)
    lsb_dps = GYRO_LSB_PER_DPS[GYRO_RANGES_DPS.index(range_dps)]  # 16.4 at ±2000, not 32768/2000
    for sample, raw in zip(gyro, rows, strict=True):
        assert in_dps(sample.xyz) == pytest.approx([v / lsb_dps for v in raw], rel=1e-9, abs=1e-12)
    assert acc[-1].t == 10.0


def check_decode(driver: MetaWearDriver, data: bytes, received_at: float) -> list[float]:
    began = time.perf_counter()
    try:
        samples = driver.decode(METAWEAR_NOTIFY_CHAR, data, received_at)
    except DecodeError:
        samples = []
    assert time.perf_counter() - began < 2.0
    assert all(math.isfinite(v) for s in samples for v in (s.t, *s.xyz))
    times = [s.t for s in samples]
    assert times == sorted(times)
    return times


@FUZZ
@given(st.binary(max_size=40), st.sampled_from(["bmi160", "bmi270"]))
def test_fuzz_any_bytes(data: bytes, variant: str) -> None:
    check_decode(MetaWearDriver(variant), data, 5.0)  # type: ignore[arg-type]


@FUZZ
@given(
    st.sampled_from([0x03, 0x13]),
    st.sampled_from([0x04, 0x05, 0x07, 0x1C, 0x80, 0x83]),
    st.binary(max_size=30),
    st.sampled_from(["bmi160", "bmi270"]),
)
def test_fuzz_known_registers(module: int, register: int, payload: bytes, variant: str) -> None:
    check_decode(MetaWearDriver(variant), bytes([module, register]) + payload, 5.0)  # type: ignore[arg-type]


@FUZZ
@given(st.lists(st.tuples(st.binary(min_size=2, max_size=20), st.floats(0, 100)), max_size=10))
def test_fuzz_stream_never_runs_backwards(notes: list[tuple[bytes, float]]) -> None:
    driver = MetaWearDriver("bmi160")
    per_sensor: dict[str, list[float]] = {"acc": [], "gyro": []}
    for payload, received_at in notes:
        data = bytes([0x03 if payload[0] % 2 else 0x13, 0x1C if payload[0] % 2 else 0x07]) + payload[2:]
        try:
            samples = driver.decode(METAWEAR_NOTIFY_CHAR, data, received_at)
        except DecodeError:
            continue
        for s in samples:
            per_sensor[s.sensor].append(s.t)
    assert all(t == sorted(t) for t in per_sensor.values())
