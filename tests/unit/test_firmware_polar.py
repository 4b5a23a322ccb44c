"""Polar PMD decoder: Polar's own SDK test vectors, then round trips and fuzzing.

The vectors are ported from github.com/polarofficial/polar-ble-sdk (snapshot at commit
8fb5311c), Android unit tests under SDK_TESTS below; each test names its source file and
test. The iOS tests (sources/iOS/ios-communications/Tests/iOSCommunicationsTests/
AccDataTest.swift, GyrDataTest.swift) carry the same vectors."""

from __future__ import annotations

import contextlib
import math
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2mu.firmware_bridge.driver import DEG_TO_RAD, STANDARD_GRAVITY, DecodeError, ImuSample
from l2mu.firmware_bridge.polar_pmd import (
    PMD_CONTROL_POINT,
    PMD_DATA,
    POLAR_EPOCH_UNIX_S,
    ControlPointOp,
    MeasurementType,
    PmdMeasurementStopped,
    PolarPmdDriver,
    ResponseStatus,
    SettingType,
    acc_millig,
    bits_from_float,
    encode_acc_frame,
    encode_control_point_response,
    encode_delta_frames,
    encode_frame,
    encode_gyro_frame,
    encode_settings,
    factor_of,
    float_from_bits,
    gyro_dps,
    parse_control_point_response,
    parse_delta_frames,
    parse_features,
    parse_frame,
    parse_settings,
    pmd_timestamps,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def f32(value: float) -> float:
    """value rounded to float32, as the SDK's Kotlin Float holds it."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def s32(value: int) -> int:
    return ((value + 2**31) % 2**32) - 2**31


ACC_RAW_TYPE1_HEADER = bytes.fromhex("02009435770000000001")


ACC_COMPRESSED_TYPE0_HEADER = bytes.fromhex("02009435770000000080")


ACC_COMPRESSED_TYPE1_FRAME = bytes.fromhex("02650000000000000081F1FF1400F00306017B0F08")


# AccDataTest.kt, `process acc raw data frame type 1` (accDataFrameContent)
ACC_RAW_TYPE1_CONTENT = bytes.fromhex(
    "F7FFFFFFE703F8FFFEFFE503F9FFFFFFE503FAFFFFFFE603FAFFFEFFE603F9FFFFFFE503F8FFFFFFE603F8FFFEFFE603"
    "FAFFFFFFE503FAFFFFFFE703FAFFFFFFE503F8FFFFFFE603F7FFFFFFE603F8FFFEFFE603F9FFFEFFE703F9FF0000E603"
    "F9FFFFFFE603F7FFFEFFE503F9FFFFFFE503F9FFFFFFE503FAFF0000E603F9FFFEFFE603F8FFFFFFE603F8FFFFFFE503"
    "F9FFFFFFE603F9FFFFFFE503FAFFFFFFE603F9FFFFFFE503F9FFFFFFE503F8FFFEFFE603F9FFFFFFE603F9FFFFFFE603"
    "F9FF0000E503F9FFFEFFE603F8FFFEFFE603F7FFFEFFE603"
)


# AccDataTest.kt, `process acc compressed data type 0` (accDataFrameContent)
ACC_COMPRESSED_TYPE0_CONTENT = bytes.fromhex(
    "7107F06A9E8D0A38BE5CBEBA2F96B3EE4BE5ADFB42B9EBBE4CFEBA2F92BFEE4BE4B1FB12B9ECBD3C3EBB2F8FD3DE4BE3"
    "B5F7D2B8EDBD307E7B2F8BE3CE8BE2BAF7A2B8EEBC20BE7B2F88F3CECBE1BDEF52F8EFBC18FE3B2F8403BFCBE0C2EF32"
    "B8F0BB044EBC2E8113AF0BE0C6EFF2F7F1B9FC7DBC2E7D279F4BDFCAEBC2F7F2B8ECCD7C2E7B378F4BDECEE392F7F3B8"
    "E00DFD2D774B7FCBDDD2DF6237F5B7D44DBD2D745B6FCBDCD7D73237F6B5C88D7D2D716B4F4BDCDCD3F236F7B4BCDDFD"
    "2C6F7B3F4BDBE0CFD236F8B2B02DBE2C6C8F1FCBDAE3C7A276F9"
)


# BlePmdClientParsersTest.kt, test_parseDeltaFrameAllSamples_withResolution32_realVector1
DELTA_RES32_REAL_VECTOR1 = bytes.fromhex(
    "0000803F000020410000A0411C060000A001000008CDCCEC0D000008CDCCEC3D33331ACDCCEC3D33331A0000C0303333"
    "1A0000C0A09999DA0000C0A09999DA6666A6A19999DA6666A60100000E20036666A6010000E000426C450E0000E00042"
    "6C450E2BF8ED21000060FDBE93BAF0939B4CCF1C060000A001000008CDCCEC0D000008CDCCEC3D33331ACDCCEC3D3333"
    "1A0000C03033331A0000C0A09999DA0000C0A09999DA6666A6A19999DA6666A60100000E20036666A6010000E000426C"
    "450E0000E000426C450E2BF8ED21000060FDBE93BAF0939B4CCF"
)


# BlePmdClientParsersTest.kt, test_parseDeltaFrameAllSamples_withResolution32 (measurementFrame)
DELTA_RES32_MEASUREMENT_FRAME = bytes.fromhex(
    "02000000193299E900DAFEFF2011173299E9E7A7651638DB0646E7A7651638DB064673413BB87A260401C90AFF597707"
    "D13287BF019F213E0D91E50176AD213E0D91E50176AD920138CDE50176AD920138CD00548487920138CD0054848778CB"
    "EE400054848778CBEE40F1DECC8B78CBEE40F1DECC8B173299E9F1DECC8B173299E9E7A76516173299E9E7A7651638DB"
    "0646E7A7651638DB064673413BB87A260401C90AFF597707D13287BF019F213E0D91E50176AD213E0D91E50176AD9201"
    "38CDE50176AD920138CD00548487920138CD0054848778CBEE40"
)


# BlePmdClientParsersTest.kt, test_parseDeltaFrameAllSamples_multipleDeltas (dataFrame)
DELTA_MULTIPLE_DELTAS = bytes.fromhex(
    "C9FF12001100030941FE2B0F9C0BBF15004F00041EF1EF00F0C123E4EDF4D1F1F1F5FF22DE3100F1FE21021F0E2B1F00"
    "E220000E02E11E20FFF1F102C5D002E0E102030A312EFBBA902BAA0E23409E030414E3EFF30F021F01E00F049E13E2D0"
    "04E222E2C20E200F2002FE000F1C32EE030A890007087C00CE2FE83A9E03041E010011194F002F12FD13FF0E100000F1"
    "C012E4EF21000001F1FFFF0210102B510B4E31FC2EBF3114EC0E2F52EF030A069E040E02A888EEE0079A00040A1F211E"
    "4E2EFEC6C002EF030102EE11030AF8130000F040BFA5E7007600"
)


def test_sdk_acc_raw_data_frame_type_1() -> None:
    # AccDataTest.kt, `process acc raw data frame type 1`: 52 Hz, no previous frame, factor 1.
    frame = parse_frame(ACC_RAW_TYPE1_HEADER + ACC_RAW_TYPE1_CONTENT)
    samples = acc_millig(frame, 1.0)
    assert frame.timestamp_ns == 2_000_000_000
    assert samples[0] == (-9, -1, 999)
    assert samples[1] == (-8, -2, 997)
    assert len(samples) == len(ACC_RAW_TYPE1_CONTENT) // 2 // 3
    assert pmd_timestamps(0, frame.timestamp_ns, len(samples), 52)[-1] == 2_000_000_000


def test_sdk_acc_compressed_data_type_0() -> None:
    # AccDataTest.kt, `process acc compressed data type 0`: factor 2.44E-4f, previous frame at 100 ns.
    factor = f32(2.44e-4)
    frame = parse_frame(ACC_COMPRESSED_TYPE0_HEADER + ACC_COMPRESSED_TYPE0_CONTENT)
    samples = acc_millig(frame, factor)
    ref = (1905, 27376, -29282)
    first = (ref[0] + 190, ref[1] - 105, ref[2] - 85)
    for got, raw in zip(samples[0], ref, strict=True):
        assert abs(got - int(factor * raw * 1000)) < 1  # the SDK truncates to whole mG
    for got, raw in zip(samples[1], first, strict=True):
        assert abs(got - int(factor * raw * 1000)) < 1
    assert all(abs(v) <= 8 * 1000 for s in samples for v in s)  # within the 8 G range
    assert len(samples) == 1 + 56
    stamps = pmd_timestamps(100, frame.timestamp_ns, len(samples), 0)
    delta = (2_000_000_000 - 100) / len(samples)
    assert stamps[0] == round(100 + delta)
    assert stamps[-1] == 2_000_000_000


def test_sdk_acc_compressed_data_type_1() -> None:
    # AccDataTest.kt, `process acc compressed data type 1`: 6-bit deltas, previous frame at 100 ns.
    frame = parse_frame(ACC_COMPRESSED_TYPE1_FRAME)
    samples = acc_millig(frame, 1.0)
    assert samples == [(-15, 20, 1008), (-20, 17, 1008)]
    assert pmd_timestamps(100, frame.timestamp_ns, 2, 0) == [100, 101]


def test_sdk_acc_type0_short_reference_sample() -> None:
    # AccDataTest.kt, measurementFrameAccType0Short: its comment gives channel 0 of the
    # reference sample, 5D FF => -163 (the array itself is not used by a test there).
    assert parse_delta_frames(bytes.fromhex("5DFF9800FD0F"), 3, 16)[0][0] == -163


GYRO_TYPE0_FRAME = bytes.fromhex("05FFFFFFFFFFFFFF7F80EAFF08000D000301DF00")


GYRO_TYPE1_FRAME = bytes.fromhex("050094357700000000810000803F000020410000A0411C010000A001000008CDCCEC0D")


def test_sdk_gyro_compressed_data_type_0() -> None:
    # GyrDataTest.kt, `process gyro compressed data type 0`: 3-bit deltas, timestamp 2^63 - 1.
    frame = parse_frame(GYRO_TYPE0_FRAME)
    assert gyro_dps(frame, 1.0) == [(-22.0, 8.0, 13.0), (-23.0, 11.0, 16.0)]
    assert pmd_timestamps(100, frame.timestamp_ns, 2, 0)[-1] == 9223372036854775807


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_sdk_gyro_compressed_data_type_1(factor: float) -> None:
    # GyrDataTest.kt, `process gyro compressed data type 1` and `... with factor`: float32
    # channels whose int bits are delta coded (28-bit deltas).
    frame = parse_frame(GYRO_TYPE1_FRAME)
    samples = gyro_dps(frame, factor)
    ref = [float_from_bits(b) for b in (0x3F800000, 0x41200000, 0x41A00000)]
    nxt = [float_from_bits(b) for b in (0x3F800000 + 0x1A00000, 0x41200000 + 0x0800000, 0x41A00000 + 0xFDECCCCD)]
    assert samples == [tuple(factor * v for v in ref), tuple(factor * v for v in nxt)]
    assert pmd_timestamps(100, frame.timestamp_ns, 2, 0)[1] == 2_000_000_000


def test_sdk_reference_sample_resolution16_signed() -> None:
    # `parse reference sample when resolution16 and type is unsigned int` (signed parse, 4 channels)
    assert parse_delta_frames(bytes.fromhex("FFFF0000FF7F0080"), 4, 16) == [[-1, 0, 32767, -32768]]


def test_sdk_reference_sample_resolution32_float() -> None:
    # `parse reference sample when resolution32 and type is decimal IEEE 754`
    got = parse_delta_frames(bytes.fromhex("00000000FFFFFFFF00000080"), 3, 32, signed=False)
    assert got == [[0, s32(0xFFFFFFFF), s32(0x80000000)]]


def test_sdk_delta_frames_resolution32_real_vector1() -> None:
    # test_parseDeltaFrameAllSamples_withResolution32_realVector1
    samples = parse_delta_frames(DELTA_RES32_REAL_VECTOR1, 3, 32, signed=False)
    assert len(samples) == 1 + 6 + 3 + 6 + 3
    assert samples[0] == [0x3F800000, 0x41200000, 0x41A00000]
    assert samples[1] == [0x3F800000 + 0x1A00000, 0x41200000 + 0x0800000, s32(0x41A00000 + 0xFDECCCCD)]


def test_sdk_delta_frames_resolution32() -> None:
    # test_parseDeltaFrameAllSamples_withResolution32: 32-bit deltas, int32 wrap-around
    samples = parse_delta_frames(DELTA_RES32_MEASUREMENT_FRAME, 3, 32, signed=False)
    assert len(samples) == 18
    ref = [0x00000002, s32(0xE9993219), s32(0xFFFEDA00)]
    assert samples[0] == ref
    assert samples[1] == [s32(ref[0] + 0xE9993217), s32(ref[1] + 0x1665A7E7), s32(ref[2] + 0x4606DB38)]


def test_sdk_delta_frames_multiple_deltas() -> None:
    # test_parseDeltaFrameAllSamples_multipleDeltas: 3- and 4-bit blocks in turn
    samples = parse_delta_frames(DELTA_MULTIPLE_DELTAS, 3, 16)
    assert len(samples) == 1 + 9 + 30 + 10 + 20 + 10 + 30 + 10 + 10 + 10
    assert samples[0] == [-55, 18, 17]
    assert samples[1] == [-54, 18, 18]


def test_sdk_settings_with_range() -> None:
    # testPmdSettingsWithRange
    got = parse_settings(bytes.fromhex("00013400010110000204F500F401E803D007040103"))
    assert got == {
        SettingType.SAMPLE_RATE: (52,),
        SettingType.RESOLUTION: (16,),
        SettingType.RANGE: (245, 500, 1000, 2000),
        SettingType.CHANNELS: (3,),
    }


def test_sdk_settings_with_range_milliunit() -> None:
    # testPmdSettingWithRangeMilliUnit
    data = bytes([SettingType.RANGE_MILLIUNIT, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00])
    data += bytes([SettingType.RESOLUTION, 0x01, 0x0E, 0x00])
    got = parse_settings(data)
    assert set(got[SettingType.RANGE_MILLIUNIT]) == {-1, 0xFF}
    assert got[SettingType.RESOLUTION] == (14,)
    assert len(got) == 2


def test_sdk_selected_serialization() -> None:
    # testPmdSelectedSerialization: FACTOR is never serialized
    selected = {
        SettingType.SAMPLE_RATE: 0x7FFF,
        SettingType.RESOLUTION: 0,
        SettingType.RANGE: 15,
        SettingType.RANGE_MILLIUNIT: 2**31 - 1,
        SettingType.CHANNELS: 4,
        SettingType.FACTOR: 15,
    }
    got = parse_settings(encode_settings(selected))
    assert len(got) == 5
    assert got == {k: (v,) for k, v in selected.items() if k != SettingType.FACTOR}


def test_sdk_control_point_response_success() -> None:
    # `success control point response for acc stream settings`
    response = parse_control_point_response(bytes.fromhex("F001020000FFFFFF"))
    assert response.op == ControlPointOp.GET_MEASUREMENT_SETTINGS
    assert response.measurement_type == MeasurementType.ACC
    assert response.status == ResponseStatus.SUCCESS
    assert response.more is False
    assert response.parameters == b"\xff\xff\xff"


def test_sdk_control_point_response_failure() -> None:
    # `failing control point response for mag stream settings`
    data = bytes.fromhex("F001060700")
    response = parse_control_point_response(data)
    assert response.measurement_type == MeasurementType.MAGNETOMETER
    assert response.status == ResponseStatus.ERROR_INVALID_RESOLUTION
    assert response.more is False
    assert response.parameters == b""
    with pytest.raises(DecodeError) as error:
        PolarPmdDriver().parse_response(data)
    assert error.value.status == "ERROR_INVALID_RESOLUTION"


def test_sdk_timestamps_rate_and_previous_both_zero() -> None:
    with pytest.raises(DecodeError):
        pmd_timestamps(0, 100_000, 100, 0)


def test_sdk_timestamps_would_be_negative() -> None:
    with pytest.raises(DecodeError):
        pmd_timestamps(0, 100_000, 100, 52)


def test_sdk_timestamps_from_frequency() -> None:
    assert pmd_timestamps(0, 10_000_000_000, 10, 1) == [i * 1_000_000_000 for i in range(1, 11)]
    assert pmd_timestamps(0, 1_000_000_000, 1, 1) == [1_000_000_000]


def test_sdk_timestamps_from_previous_timestamp() -> None:
    assert pmd_timestamps(1_000_000_000, 11_000_000_000, 10, 1) == [i * 1_000_000_000 for i in range(2, 12)]
    assert pmd_timestamps(100, 2_000_000_000, 3, 1) == [round(666666733.33), round(1333333366.66), 2_000_000_000]
    assert pmd_timestamps(1_000_000_000, 2_000_000_000, 1, 1) == [2_000_000_000]


def test_commands_follow_the_sdk_layout() -> None:
    driver = PolarPmdDriver()
    assert [w.data for w in driver.prepare_commands()] == [b"\x01\x02", b"\x01\x05"]
    assert all(w.char_uuid == PMD_CONTROL_POINT for w in driver.start_commands())
    start_acc = driver.start_commands()[0].data
    # [op 2, ACC] + TLV: rate 52 (u16), resolution 16 (u16), range 8 (u16)
    assert start_acc == bytes.fromhex("0202000134000101100002010800")
    assert [w.data for w in driver.stop_commands()] == [b"\x03\x02", b"\x03\x05"]


def test_settings_answer_picks_offered_values_and_start_answer_sets_factor() -> None:
    driver = PolarPmdDriver()
    # A watch offering 50 Hz only (Polar watches stream ACC at 50 Hz, ±8 G).
    offer = encode_settings({SettingType.SAMPLE_RATE: 50, SettingType.RESOLUTION: 16, SettingType.RANGE: 8})
    offer += bytes([SettingType.CHANNELS, 1, 3])
    driver.decode(PMD_CONTROL_POINT, encode_control_point_response(1, MeasurementType.ACC, parameters=offer), 0.0)
    assert driver.selected_settings(MeasurementType.ACC) == {
        SettingType.SAMPLE_RATE: 50,
        SettingType.RESOLUTION: 16,
        SettingType.RANGE: 8,
        SettingType.CHANNELS: 3,
    }
    factor = struct.pack("<f", 0.5)
    answer = encode_control_point_response(2, MeasurementType.ACC, parameters=bytes([SettingType.FACTOR, 1]) + factor)
    driver.start_commands()
    driver.parse_response(answer)
    frame = encode_acc_frame(10**18, [(100, -200, 1000), (102, -198, 1002)])
    samples = driver.decode(PMD_DATA, frame, 0.0)
    assert [s.xyz for s in samples] == [
        tuple(v * 0.5 * STANDARD_GRAVITY / 1000 for v in raw) for raw in [(100, -200, 1000), (102, -198, 1002)]
    ]
    assert samples[-1].t == 10**18 / 1e9 + POLAR_EPOCH_UNIX_S
    assert samples[1].t - samples[0].t == pytest.approx(1 / 50, abs=1e-6)


def test_settings_answer_split_over_several_notifications() -> None:
    driver = PolarPmdDriver()
    offer = encode_settings({SettingType.SAMPLE_RATE: 26, SettingType.RESOLUTION: 16})
    first = encode_control_point_response(1, MeasurementType.GYRO, parameters=offer[:4], more=True)
    last = encode_control_point_response(1, MeasurementType.GYRO, parameters=offer[4:])
    driver.parse_response(first)
    driver.parse_response(last)
    assert driver.selected_settings(MeasurementType.GYRO)[SettingType.SAMPLE_RATE] == 26


def test_missing_gyro_is_reported_and_dropped() -> None:
    driver = PolarPmdDriver()
    refusal = encode_control_point_response(1, MeasurementType.GYRO, status=ResponseStatus.ERROR_NOT_SUPPORTED)
    with pytest.raises(DecodeError) as error:
        driver.decode(PMD_CONTROL_POINT, refusal, 0.0)
    assert error.value.status == "ERROR_NOT_SUPPORTED"
    assert driver.sensors == ("acc",)
    assert [w.data[1] for w in driver.start_commands()] == [MeasurementType.ACC]


def test_features_and_device_initiated_stop() -> None:
    assert parse_features(bytes([0x0F, 0x25, 0x02])) == {
        MeasurementType.ECG,
        MeasurementType.ACC,
        MeasurementType.GYRO,
        MeasurementType.SDK_MODE,
    }
    driver = PolarPmdDriver()
    driver.apply_features({MeasurementType.ACC, MeasurementType.PPG})
    assert driver.sensors == ("acc",)
    assert driver.parse_response(bytes([0x01, 0x02, 0x05])) == PmdMeasurementStopped((2, 5))


def frames(start_ns: int, per_frame: int, count: int, rate: float) -> list[tuple[bytes, list[tuple[int, int, int]]]]:
    out = []
    n = 0
    for _k in range(count):
        rows = [(n + i, -(n + i), 1000) for i in range(per_frame)]
        last_ns = start_ns + round((n + per_frame - 1) * 1e9 / rate)
        out.append((encode_acc_frame(last_ns, rows), rows))
        n += per_frame
    return out


def test_consecutive_frames_are_evenly_spaced_and_monotonic() -> None:
    driver = PolarPmdDriver(sensors=("acc",))
    t: list[float] = []
    for frame, _ in frames(724_060_800_000_000_000, 10, 5, 52):
        t += [s.t for s in driver.decode(PMD_DATA, frame, 0.0)]
    steps = [b - a for a, b in zip(t, t[1:], strict=False)]
    assert all(step == pytest.approx(1 / 52, abs=2e-6) for step in steps)


@pytest.mark.parametrize(("from_previous", "spacing"), [(True, (20.9 - 9) / 10), (False, 1.0)])
def test_spacing_within_a_frame(from_previous: bool, spacing: float) -> None:
    driver = PolarPmdDriver(sensors=("acc",), spacing_from_previous_frame=from_previous)
    sequence = frames(724_060_800_000_000_000, 10, 2, 52)
    driver.decode(PMD_DATA, sequence[0][0], 0.0)  # its last sample is at 9 periods
    # The second frame ends at 20.9 periods, not 19: the sensor clock runs 10 % slow.
    slow = encode_acc_frame(724_060_800_000_000_000 + round(20.9 * 1e9 / 52), sequence[1][1])
    second = [s.t for s in driver.decode(PMD_DATA, slow, 0.0)]
    assert second[1] - second[0] == pytest.approx(spacing / 52, abs=2e-6)


def test_a_lost_frame_does_not_stretch_the_next_one() -> None:
    driver = PolarPmdDriver(sensors=("acc",))
    sequence = frames(724_060_800_000_000_000, 10, 4, 52)
    del sequence[2]
    t = [[s.t for s in driver.decode(PMD_DATA, frame, 0.0)] for frame, _ in sequence]
    last = t[-1]
    assert last[1] - last[0] == pytest.approx(1 / 52, abs=2e-6)  # spacing from the rate, not the hole
    assert last[0] - t[1][-1] == pytest.approx(11 / 52, abs=2e-6)


def test_clock_set_backwards_never_runs_time_backwards() -> None:
    driver = PolarPmdDriver(sensors=("acc",))
    first, _ = frames(724_060_800_000_000_000, 10, 1, 52)[0]
    back, _ = frames(724_060_000_000_000_000, 10, 1, 52)[0]  # 800 s earlier
    t1 = [s.t for s in driver.decode(PMD_DATA, first, 0.0)]
    t2 = [s.t for s in driver.decode(PMD_DATA, back, 0.0)]
    assert t2[0] > t1[-1]
    assert driver.clock_jumps() == 1


int16 = st.integers(-32768, 32767)


xyz16 = st.tuples(int16, int16, int16)


@FUZZ
@given(st.lists(xyz16, min_size=1, max_size=80), st.integers(0, 2**40))
def test_compressed_acc_round_trip(rows: list[tuple[int, int, int]], t_ns: int) -> None:
    frame = parse_frame(encode_acc_frame(10**17 + t_ns, rows))
    assert acc_millig(frame, 1.0) == [tuple(float(v) for v in r) for r in rows]


@FUZZ
@given(st.sampled_from([0, 1, 2]), st.data())
def test_raw_acc_round_trip(frame_type: int, data: st.DataObject) -> None:
    bound = 2 ** (8 * (frame_type + 1) - 1)
    value = st.integers(-bound, bound - 1)
    rows = data.draw(st.lists(st.tuples(value, value, value), min_size=1, max_size=40))
    frame = parse_frame(encode_acc_frame(10**17, rows, compressed=False, frame_type=frame_type))
    assert acc_millig(frame, 1.0) == [tuple(float(v) for v in r) for r in rows]


@FUZZ
@given(st.lists(xyz16, min_size=1, max_size=60), st.floats(1e-3, 1.0))
def test_gyro_round_trip_through_the_driver(rows: list[tuple[int, int, int]], factor: float) -> None:
    driver = PolarPmdDriver()
    factor = f32(factor)
    answer = bytes([SettingType.FACTOR, 1]) + struct.pack("<i", bits_from_float(factor))
    driver.parse_response(encode_control_point_response(2, MeasurementType.GYRO, parameters=answer))
    samples = driver.decode(PMD_DATA, encode_gyro_frame(10**17, rows), 0.0)
    assert [s.sensor for s in samples] == ["gyro"] * len(rows)
    for sample, raw in zip(samples, rows, strict=True):
        assert sample.xyz == pytest.approx([v * factor * DEG_TO_RAD for v in raw])


@FUZZ
@given(st.lists(st.tuples(*[st.integers(-(2**31), 2**31 - 1)] * 3), min_size=1, max_size=40))
def test_delta_codec_round_trip_32_bit(rows: list[tuple[int, int, int]]) -> None:
    assert parse_delta_frames(encode_delta_frames(rows, 32), 3, 32) == [list(r) for r in rows]


@FUZZ
@given(st.dictionaries(st.sampled_from([t for t in SettingType if t != SettingType.FACTOR]), st.integers(0, 127)))
def test_settings_round_trip(selected: dict[SettingType, int]) -> None:
    assert parse_settings(encode_settings(selected)) == ({k: (v,) for k, v in selected.items()} if selected else {})
    assert factor_of(parse_settings(encode_settings(selected))) is None


def check_decode(driver: PolarPmdDriver, uuid: str, data: bytes) -> None:
    began = time.perf_counter()
    try:
        samples = driver.decode(uuid, data, 1234.5)
    except DecodeError:
        samples = []
    assert time.perf_counter() - began < 2.0
    assert all(isinstance(s, ImuSample) for s in samples)
    assert all(math.isfinite(s.t) and all(math.isfinite(v) for v in s.xyz) for s in samples)
    assert [s.t for s in samples] == sorted(s.t for s in samples)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from([PMD_DATA, PMD_CONTROL_POINT]))
def test_fuzz_any_bytes(data: bytes, uuid: str) -> None:
    check_decode(PolarPmdDriver(), uuid, data)


@FUZZ
@given(
    st.sampled_from([MeasurementType.ACC, MeasurementType.GYRO]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 255),
    st.binary(max_size=300),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)
def test_fuzz_frames_with_valid_headers(kind: int, t_ns: int, frame_byte: int, content: bytes, factor: float) -> None:
    driver = PolarPmdDriver()
    answer = bytes([SettingType.FACTOR, 1]) + struct.pack("<f", factor)
    with contextlib.suppress(DecodeError):
        driver.parse_response(encode_control_point_response(2, kind, parameters=answer))
    frame = encode_frame(kind, t_ns, frame_byte & 0x7F, bool(frame_byte & 0x80), content)
    check_decode(driver, PMD_DATA, frame)


@FUZZ
@given(st.lists(st.binary(max_size=120), max_size=8))
def test_fuzz_a_stream_of_frames_stays_ordered(payloads: list[bytes]) -> None:
    driver = PolarPmdDriver()
    emitted: list[float] = []
    for i, payload in enumerate(payloads):
        frame = encode_frame(MeasurementType.ACC, 10**17 + i * 10**8 + len(payload), 0x81, True, payload)
        with contextlib.suppress(DecodeError):
            emitted += [s.t for s in driver.decode(PMD_DATA, frame, 0.0)]
    assert emitted == sorted(emitted)
