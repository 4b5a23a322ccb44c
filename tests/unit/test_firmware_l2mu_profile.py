"""The L2MU IMU profile (firmware_bridge/PROTOCOL.md): packet layout, stream rules, fuzzing."""

from __future__ import annotations

import math
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2mu.firmware_bridge.driver import DEG_TO_RAD, STANDARD_GRAVITY, DecodeError
from l2mu.firmware_bridge.l2mu_profile import (
    L2MU_CONTROL_CHAR,
    L2MU_IMU_CHAR,
    L2muBatch,
    L2muDriver,
    L2muEncoder,
    decode_packet,
    encode_packet,
    encode_start,
    encode_stop,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


int16 = st.integers(-32768, 32767)


xyz16 = st.tuples(int16, int16, int16)


def packet(seq: int, t0_ms: int, n: int = 4, rate_chz: int = 2500, value: int = 0) -> bytes:
    return encode_packet(L2muBatch(seq, rate_chz, 8, 0, t0_ms, tuple((value + i, 0, 4096) for i in range(n))))


def test_layout_matches_the_spec() -> None:
    batch = L2muBatch(
        seq=0x0102, rate_chz=1250, acc_range_g=4, gyro_range_dps=2000, t0_ms=0x0A0B0C0D,
        acc=((1, -1, 8192),), gyro=((-2, 2, 0),),
    )  # fmt: skip
    data = encode_packet(batch)
    assert data == bytes.fromhex("01 01 0201 e204 04 d007 0d0c0b0a0100 ffff 0020feff 0200 0000")
    assert decode_packet(data) == batch
    assert batch.acc_si()[0][2] == pytest.approx(STANDARD_GRAVITY)  # 8192 counts at ±4 g = 1 g
    assert batch.gyro_si()[0][0] == pytest.approx(-2 * 2000 / 32768 * DEG_TO_RAD)


def test_control_commands() -> None:
    assert encode_start(25) == bytes.fromhex("01c40900")
    assert encode_start(12.5, 1) == bytes.fromhex("01e20401")
    assert encode_start() == bytes.fromhex("01000000")
    assert encode_stop() == b"\x02"
    driver = L2muDriver(rate_hz=50, max_samples=4)
    assert driver.start_commands() == [(L2MU_CONTROL_CHAR, bytes.fromhex("01881304"))]
    assert driver.stop_commands() == [(L2MU_CONTROL_CHAR, b"\x02")]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        packet(0, 0)[:12],  # shorter than the header
        packet(0, 0)[:13],  # no samples
        packet(0, 0)[:-1],  # half a sample
        b"\x02" + packet(0, 0)[1:],  # unknown version
        packet(0, 0, rate_chz=0),
        packet(0, 0)[:6] + b"\x00" + packet(0, 0)[7:],  # zero accelerometer range
        # gyro flag set but a zero gyro range
        packet(0, 0)[:1] + b"\x01" + packet(0, 0)[2:7] + b"\x00\x00" + packet(0, 0, n=2)[9:] + b"\x00" * 12,
    ],
)
def test_invalid_packets_are_refused_without_touching_the_stream(bad: bytes) -> None:
    driver = L2muDriver()
    driver.decode(L2MU_IMU_CHAR, packet(0, 1000), 0.0)
    with pytest.raises(DecodeError):
        driver.decode(L2MU_IMU_CHAR, bad, 0.0)
    driver.decode(L2MU_IMU_CHAR, packet(1, 1160), 0.0)
    assert driver.gaps == 0


def test_reserved_flag_bits_are_ignored() -> None:
    data = bytearray(packet(0, 0))
    data[1] |= 0xFE
    assert decode_packet(bytes(data)).gyro is None


def test_times_rates_and_units() -> None:
    driver = L2muDriver()
    samples = driver.decode(L2MU_IMU_CHAR, packet(7, 5000, n=3, rate_chz=2500, value=4096), 0.0)
    assert [s.t for s in samples] == pytest.approx([5.0, 5.04, 5.08])
    assert samples[0].xyz == pytest.approx((STANDARD_GRAVITY, 0.0, STANDARD_GRAVITY))
    assert driver.native_rate_hz == 25.0


def test_gaps_are_counted_and_wraparound_is_not_a_gap() -> None:
    driver = L2muDriver()
    t = 0
    for seq in (65534, 65535, 0, 1, 4, 5):
        driver.decode(L2MU_IMU_CHAR, packet(seq, t), 0.0)
        t += 160
    assert driver.stream.gaps == 2
    assert driver.stream.gap_events == 1
    assert driver.stream.last_gap == 0
    driver.decode(L2MU_IMU_CHAR, packet(9, t), 0.0)
    assert driver.stream.last_gap == 3


def test_duplicates_are_dropped_and_restarts_accepted() -> None:
    driver = L2muDriver()
    assert driver.decode(L2MU_IMU_CHAR, packet(100, 1000), 0.0)
    assert driver.decode(L2MU_IMU_CHAR, packet(101, 1160), 0.0)
    assert driver.decode(L2MU_IMU_CHAR, packet(100, 1000), 0.0) == []  # stale duplicate
    assert driver.stream.duplicates == 1
    restarted = driver.decode(L2MU_IMU_CHAR, packet(0, 50_000), 0.0)  # watch app restarted
    assert restarted and driver.stream.restarts == 1 and driver.stream.gaps == 0


def test_watch_clock_wraps_at_2_to_32_ms() -> None:
    driver = L2muDriver()
    first = driver.decode(L2MU_IMU_CHAR, packet(0, 2**32 - 100), 0.0)
    second = driver.decode(L2MU_IMU_CHAR, packet(1, 60), 0.0)
    assert second[0].t - first[0].t == pytest.approx(0.16)


def test_clock_set_back_is_re_anchored_not_replayed() -> None:
    driver = L2muDriver()
    first = driver.decode(L2MU_IMU_CHAR, packet(0, 100_000), 0.0)
    second = driver.decode(L2MU_IMU_CHAR, packet(1, 40_000), 0.0)  # 60 s back
    assert second[0].t > first[-1].t
    assert second[1].t - second[0].t == pytest.approx(0.04)
    assert driver.clock_jumps() == 1
    # A small overlap (jitter) is clamped instead.
    third = driver.decode(L2MU_IMU_CHAR, packet(2, 40_150), 0.0)
    assert third[0].t >= second[-1].t


def test_acc_and_gyro_come_out_in_time_order() -> None:
    encoder = L2muEncoder(rate_hz=50, acc_range_g=8, gyro_range_dps=2000)
    data = encoder.packet(3.0, [(0.0, 0.0, 9.8)] * 3, [(0.1, 0.0, -0.1)] * 3)
    samples = L2muDriver().decode(L2MU_IMU_CHAR, data, 0.0)
    assert [s.sensor for s in samples] == ["acc", "gyro"] * 3
    assert [s.t for s in samples] == pytest.approx([3.0, 3.0, 3.02, 3.02, 3.04, 3.04])


@FUZZ
@given(
    st.integers(0, 65535),
    st.integers(1, 65535),
    st.integers(1, 255),
    st.integers(0, 65535),
    st.integers(0, 2**32 - 1),
    st.lists(st.tuples(xyz16, xyz16), min_size=1, max_size=20),
    st.booleans(),
)
def test_codec_round_trip(
    seq: int, rate: int, acc_range: int, gyro_range: int, t0: int, rows: list, with_gyro: bool
) -> None:
    gyro = tuple(g for _, g in rows) if with_gyro and gyro_range else None
    batch = L2muBatch(seq, rate, acc_range, gyro_range if gyro else 0, t0, tuple(a for a, _ in rows), gyro)
    assert decode_packet(encode_packet(batch)) == batch


@FUZZ
@given(
    st.lists(
        st.tuples(*[st.floats(-8 * STANDARD_GRAVITY, 8 * 32767 / 32768 * STANDARD_GRAVITY)] * 3),
        min_size=1,
        max_size=40,
    ),
    st.floats(1e6, 2e9),
    st.sampled_from([12.5, 25.0, 50.0, 100.0]),
)
def test_encoder_round_trip_in_si_units(acc: list, t0: float, rate: float) -> None:
    encoder = L2muEncoder(rate_hz=rate, acc_range_g=8, max_samples=7)
    driver = L2muDriver(rate_hz=rate)
    samples = [s for data in encoder.packets(t0, acc) for s in driver.decode(L2MU_IMU_CHAR, data, 0.0)]
    lsb = 8 / 32768 * STANDARD_GRAVITY
    assert len(samples) == len(acc)
    for sample, want in zip(samples, acc, strict=True):
        assert sample.xyz == pytest.approx(want, abs=lsb / 2 + 1e-9)
    t = [s.t for s in samples]
    steps = [b - a for a, b in zip(t, t[1:], strict=False)]
    # Each packet's t0 is rounded to a whole ms on the wire.
    assert all(step == pytest.approx(1 / rate, abs=1.1e-3) for step in steps)
    assert driver.gaps == 0


def header_with_samples(seq: int, t0: int, n: int, flags: int) -> bytes:
    return struct.pack("<BBHHBHI", 1, flags, seq, 2500, 8, 2000, t0) + b"\x01\x00" * 3 * n


@FUZZ
@given(st.binary(max_size=120))
def test_fuzz_any_bytes(data: bytes) -> None:
    began = time.perf_counter()
    try:
        samples = L2muDriver().decode(L2MU_IMU_CHAR, data, 0.0)
    except DecodeError:
        samples = []
    assert time.perf_counter() - began < 2.0
    assert all(math.isfinite(v) for s in samples for v in (s.t, *s.xyz))
    assert [s.t for s in samples] == sorted(s.t for s in samples)


@FUZZ
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.builds(
                header_with_samples,
                st.integers(0, 65535),
                st.integers(0, 2**32 - 1),
                st.integers(1, 6),
                st.sampled_from([0, 1]),
            ),
        ),
        max_size=12,
    )
)
def test_fuzz_streams_never_run_backwards(packets: list[bytes]) -> None:
    driver = L2muDriver()
    per_sensor: dict[str, list[float]] = {"acc": [], "gyro": []}
    for data in packets:
        try:
            samples = driver.decode(L2MU_IMU_CHAR, data, 0.0)
        except DecodeError:
            continue
        assert [s.t for s in samples] == sorted(s.t for s in samples)
        for s in samples:
            per_sensor[s.sensor].append(s.t)
    assert all(t == sorted(t) for t in per_sensor.values())
    assert driver.gaps >= 0
