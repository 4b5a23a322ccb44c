"""The open L2MU IMU GATT profile (PROTOCOL.md): packet codec, stream state, generic driver."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from l2mu.firmware_bridge.driver import (
    DEG_TO_RAD,
    STANDARD_GRAVITY,
    DecodeError,
    GattWrite,
    ImuSample,
    Sensor,
    WatchDriver,
    register,
)

L2MU_SERVICE = "296a0001-e233-43a0-bd2e-ecb4574ec67f"
L2MU_IMU_CHAR = "296a0002-e233-43a0-bd2e-ecb4574ec67f"
L2MU_CONTROL_CHAR = "296a0003-e233-43a0-bd2e-ecb4574ec67f"

VERSION = 1
FLAG_GYRO = 0x01
OP_START = 0x01
OP_STOP = 0x02
HEADER = struct.Struct("<BBHHBHI")  # version, flags, seq, rate_cHz, acc_range_g, gyro_range_dps, t0_ms
_TRIPLE = struct.Struct("<3h")
SEQ_MODULO = 1 << 16
CLOCK_MODULO = 1 << 32
# A packet this many sequence numbers behind (or fewer) that is not newer is a stale duplicate.
DUPLICATE_WINDOW = 16


@dataclass(frozen=True)
class L2muBatch:
    """One decoded packet, still in wire units (counts, cHz, ms)."""

    seq: int
    rate_chz: int
    acc_range_g: int
    gyro_range_dps: int
    t0_ms: int
    acc: tuple[tuple[int, int, int], ...]
    gyro: tuple[tuple[int, int, int], ...] | None = None
    version: int = VERSION

    @property
    def rate_hz(self) -> float:
        return self.rate_chz / 100.0

    def offsets_ms(self) -> list[float]:
        """Time of each sample after t0, in ms."""
        return [i * 100_000.0 / self.rate_chz for i in range(len(self.acc))]

    def acc_si(self) -> list[tuple[float, float, float]]:
        scale = self.acc_range_g / 32768.0 * STANDARD_GRAVITY
        return [(x * scale, y * scale, z * scale) for x, y, z in self.acc]

    def gyro_si(self) -> list[tuple[float, float, float]]:
        scale = self.gyro_range_dps / 32768.0 * DEG_TO_RAD
        return [(x * scale, y * scale, z * scale) for x, y, z in self.gyro or ()]


def decode_packet(data: bytes) -> L2muBatch:
    if len(data) < HEADER.size:
        raise DecodeError("L2MU packet shorter than its header")
    version, flags, seq, rate_chz, acc_range_g, gyro_range_dps, t0_ms = HEADER.unpack_from(data)
    if version != VERSION:
        raise DecodeError("unsupported L2MU profile version")
    has_gyro = bool(flags & FLAG_GYRO)
    stride = 2 * _TRIPLE.size if has_gyro else _TRIPLE.size
    body = len(data) - HEADER.size
    if body == 0 or body % stride:
        raise DecodeError("L2MU packet is not whole samples")
    if rate_chz == 0 or acc_range_g == 0 or (has_gyro and gyro_range_dps == 0):
        raise DecodeError("L2MU packet with a zero rate or range")
    triples = [_TRIPLE.unpack_from(data, offset) for offset in range(HEADER.size, len(data), _TRIPLE.size)]
    acc = tuple(triples[0::2] if has_gyro else triples)
    gyro = tuple(triples[1::2]) if has_gyro else None
    return L2muBatch(seq, rate_chz, acc_range_g, gyro_range_dps if has_gyro else 0, t0_ms, acc, gyro, version)


def encode_packet(batch: L2muBatch) -> bytes:
    has_gyro = batch.gyro is not None
    if not batch.acc or (has_gyro and len(batch.gyro or ()) != len(batch.acc)):
        raise ValueError("a packet needs ≥ 1 sample, and as many gyro as acc samples")
    header = HEADER.pack(
        batch.version,
        FLAG_GYRO if has_gyro else 0,
        batch.seq % SEQ_MODULO,
        batch.rate_chz,
        batch.acc_range_g,
        batch.gyro_range_dps if has_gyro else 0,
        batch.t0_ms % CLOCK_MODULO,
    )
    rows = zip(batch.acc, batch.gyro, strict=True) if has_gyro else ((a,) for a in batch.acc)
    return header + b"".join(_TRIPLE.pack(*t) for row in rows for t in row)


def encode_start(rate_hz: float | None = None, max_samples: int | None = None) -> bytes:
    rate_chz = 0 if rate_hz is None else round(rate_hz * 100)
    if not 0 <= rate_chz < SEQ_MODULO or not 0 <= (max_samples or 0) <= 255:
        raise ValueError("rate or max_samples out of range")
    return struct.pack("<BHB", OP_START, rate_chz, max_samples or 0)


def encode_stop() -> bytes:
    return bytes((OP_STOP,))


def quantize(values: Sequence[float], full_scale: float) -> tuple[int, int, int]:
    """SI value in the unit of full_scale → int16 counts (rounded, saturated)."""
    counts = [max(-32768, min(32767, round(v / full_scale * 32768))) for v in values]
    return counts[0], counts[1], counts[2]


class L2muEncoder:
    """Turns SI samples into packets the way a watch would; for virtual watches and tests."""

    def __init__(
        self, rate_hz: float, acc_range_g: int = 8, gyro_range_dps: int = 0, seq: int = 0, max_samples: int = 8
    ) -> None:
        self.rate_chz = round(rate_hz * 100)
        self.acc_range_g = acc_range_g
        self.gyro_range_dps = gyro_range_dps
        self.seq = seq % SEQ_MODULO
        self.max_samples = max_samples

    def packet(
        self,
        t0_s: float,
        acc_ms2: Sequence[Sequence[float]],
        gyro_rads: Sequence[Sequence[float]] | None = None,
    ) -> bytes:
        acc = tuple(quantize([v / STANDARD_GRAVITY for v in s], self.acc_range_g) for s in acc_ms2)
        gyro = None
        if gyro_rads is not None:
            gyro = tuple(quantize([v / DEG_TO_RAD for v in s], self.gyro_range_dps) for s in gyro_rads)
        batch = L2muBatch(
            self.seq, self.rate_chz, self.acc_range_g, self.gyro_range_dps if gyro else 0, round(t0_s * 1000), acc, gyro
        )
        self.seq = (self.seq + 1) % SEQ_MODULO
        return encode_packet(batch)

    def packets(
        self,
        t0_s: float,
        acc_ms2: Sequence[Sequence[float]],
        gyro_rads: Sequence[Sequence[float]] | None = None,
    ) -> list[bytes]:
        """Consecutive samples from t0_s, split into packets of at most max_samples."""
        period = 100.0 / self.rate_chz
        out = []
        for start in range(0, len(acc_ms2), self.max_samples):
            end = start + self.max_samples
            gyro = None if gyro_rads is None else gyro_rads[start:end]
            out.append(self.packet(t0_s + start * period, acc_ms2[start:end], gyro))
        return out


class L2muStream:
    """Sequence and clock state of one connection (PROTOCOL.md, "Host obligations")."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.gaps = 0  # packets lost, in total
        self.gap_events = 0
        self.last_gap = 0  # packets lost just before the latest accepted packet
        self.duplicates = 0
        self.restarts = 0
        self._seq: int | None = None
        self._t0_raw = 0
        self._t0 = 0  # unwrapped ms

    def accept(self, batch: L2muBatch) -> int | None:
        """Unwrapped t0 (ms) of an accepted packet, or None for a stale duplicate."""
        self.last_gap = 0
        if self._seq is None:
            t0 = batch.t0_ms
        else:
            step = (batch.t0_ms - self._t0_raw) % CLOCK_MODULO
            t0 = self._t0 + (step if step < CLOCK_MODULO // 2 else step - CLOCK_MODULO)
            ahead = (batch.seq - (self._seq + 1)) % SEQ_MODULO
            if 0 < ahead < SEQ_MODULO // 2:
                self.gaps += ahead
                self.gap_events += 1
                self.last_gap = ahead
            elif ahead >= SEQ_MODULO // 2:
                behind = SEQ_MODULO - ahead
                if behind <= DUPLICATE_WINDOW and t0 <= self._t0:
                    self.duplicates += 1
                    return None
                self.restarts += 1
        self._seq, self._t0_raw, self._t0 = batch.seq, batch.t0_ms, t0
        return t0


@register
class L2muDriver(WatchDriver):
    """Any watch speaking the L2MU IMU profile."""

    name = "l2mu"
    service_uuids = (L2MU_SERVICE,)
    notify_uuids = (L2MU_IMU_CHAR,)
    default_sensors: tuple[Sensor, ...] = ("acc", "gyro")
    default_rate_hz = 25.0

    def __init__(
        self, rate_hz: float | None = None, max_samples: int = 0, sensors: Sequence[Sensor] | None = None
    ) -> None:
        super().__init__()
        self.rate_hz = self.default_rate_hz if rate_hz is None else rate_hz
        self.max_samples = max_samples
        self._sensors = tuple(sensors) if sensors is not None else self.default_sensors
        self.stream = L2muStream()
        self._reported_rate: float | None = None

    @property
    def sensors(self) -> tuple[Sensor, ...]:
        return self._sensors

    @property
    def native_rate_hz(self) -> float:
        return self._reported_rate or self.rate_hz

    @property
    def gaps(self) -> int:
        return self.stream.gaps

    def start_commands(self) -> list[GattWrite]:
        return [GattWrite(L2MU_CONTROL_CHAR, encode_start(self.rate_hz, self.max_samples))]

    def stop_commands(self) -> list[GattWrite]:
        return [GattWrite(L2MU_CONTROL_CHAR, encode_stop())]

    def reset(self) -> None:
        super().reset()
        self.stream.reset()

    def decode(self, char_uuid: str, data: bytes, received_at: float) -> list[ImuSample]:
        self._check_received_at(received_at)
        if self._char(char_uuid) != L2MU_IMU_CHAR:
            raise DecodeError("not the L2MU IMU data characteristic")
        batch = decode_packet(bytes(data))
        t0 = self.stream.accept(batch)
        if t0 is None:
            return []
        self._reported_rate = batch.rate_hz
        times = [(t0 + offset) / 1000.0 for offset in batch.offsets_ms()]
        samples = self._emit("acc", times, batch.acc_si())
        if batch.gyro is not None:
            samples += self._emit("gyro", times, batch.gyro_si())
            # acc before gyro at equal times; sort is stable and each list is already ordered
            samples.sort(key=lambda s: s.t)
        return samples
