"""Polar Measurement Data (PMD) service: Verity Sense (ACC + GYRO), OH1 and Polar watches (ACC).

Facts from the Polar BLE SDK (github.com/polarofficial/polar-ble-sdk):
technical_documentation/online_measurement.pdf and the Android sources under
sources/Android/android-communications/library/src/main/java/com/polar/androidcommunications/
api/ble/model/gatt/client/pmd/ (BlePMDClient.kt, PmdDataFrame.kt, PmdSetting.kt,
PmdControlPointResponse.kt, model/AccData.kt, model/GyrData.kt, model/PmdTimeStampUtils.kt).

Wire format, all little-endian:
- Control point (write with response; answers arrive as notifications on the same
  characteristic): [op, (recording << 7) | measurement type, settings TLV...]. The answer
  is [0xF0, op, measurement type, status, more, parameters...]; a watch may also push
  [0x01, types...] when it stops a stream by itself.
- Settings TLV: [setting type, count, count × value], value sizes per type (SETTING_SIZES).
- Data frame: [measurement type][u64 timestamp, ns since 2000-01-01, of the LAST sample]
  [frame type: bit 7 = compressed (delta), bits 0..6 = type][content].
- Compressed content: a reference sample (channels × ceil(resolution/8) bytes), then
  blocks of [delta bit width][sample count][count × channels deltas, packed LSB first];
  each sample is the previous one plus its delta.
- Values are multiplied by the FACTOR setting the watch returns in its start response.
  ACC arrives in mG (compressed type 0: in G, so ×1000); GYRO in deg/s.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum

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

PMD_SERVICE = "fb005c80-02e7-f387-1cad-8acd2d8df0c8"
PMD_CONTROL_POINT = "fb005c81-02e7-f387-1cad-8acd2d8df0c8"
PMD_DATA = "fb005c82-02e7-f387-1cad-8acd2d8df0c8"

# Polar's epoch is 2000-01-01T00:00:00Z; seconds from the Unix epoch to it.
POLAR_EPOCH_UNIX_S = 946_684_800
CONTROL_POINT_RESPONSE_CODE = 0xF0
ONLINE_MEASUREMENT_STOPPED = 0x01
MEASUREMENT_TYPE_MASK = 0x3F
COMPRESSED_BIT = 0x80
FRAME_TYPE_MASK = 0x7F
# A frame never carries more samples than this; a bigger count is corrupt data, and
# refusing it keeps a hostile frame (0-bit deltas, 255 samples per 2 bytes) cheap.
MAX_SAMPLES_PER_FRAME = 8192


class MeasurementType(IntEnum):
    ECG = 0
    PPG = 1
    ACC = 2
    PPI = 3
    GYRO = 5
    MAGNETOMETER = 6
    SKIN_TEMP = 7
    SDK_MODE = 9
    LOCATION = 10
    PRESSURE = 11
    TEMPERATURE = 12
    OFFLINE_RECORDING = 13
    OFFLINE_HR = 14


class ControlPointOp(IntEnum):
    NULL_ITEM = 0
    GET_MEASUREMENT_SETTINGS = 1
    REQUEST_MEASUREMENT_START = 2
    STOP_MEASUREMENT = 3
    GET_SDK_MODE_MEASUREMENT_SETTINGS = 4
    GET_MEASUREMENT_STATUS = 5
    GET_SDK_MODE_STATUS = 6
    GET_OFFLINE_RECORDING_TRIGGER_STATUS = 7
    SET_OFFLINE_RECORDING_TRIGGER_MODE = 8
    SET_OFFLINE_RECORDING_TRIGGER_SETTINGS = 9


class ResponseStatus(IntEnum):
    SUCCESS = 0
    ERROR_INVALID_OP_CODE = 1
    ERROR_INVALID_MEASUREMENT_TYPE = 2
    ERROR_NOT_SUPPORTED = 3
    ERROR_INVALID_LENGTH = 4
    ERROR_INVALID_PARAMETER = 5
    ERROR_ALREADY_IN_STATE = 6
    ERROR_INVALID_RESOLUTION = 7
    ERROR_INVALID_SAMPLE_RATE = 8
    ERROR_INVALID_RANGE = 9
    ERROR_INVALID_MTU = 10
    ERROR_INVALID_NUMBER_OF_CHANNELS = 11
    ERROR_INVALID_STATE = 12
    ERROR_DEVICE_IN_CHARGER = 13
    ERROR_DISK_FULL = 14


class SettingType(IntEnum):
    SAMPLE_RATE = 0  # Hz
    RESOLUTION = 1  # bits
    RANGE = 2  # ± unit (G, deg/s)
    RANGE_MILLIUNIT = 3
    CHANNELS = 4
    FACTOR = 5  # IEEE 754 float32 bits
    SECURITY = 6


SETTING_SIZES = {
    SettingType.SAMPLE_RATE: 2,
    SettingType.RESOLUTION: 2,
    SettingType.RANGE: 2,
    SettingType.RANGE_MILLIUNIT: 4,
    SettingType.CHANNELS: 1,
    SettingType.FACTOR: 4,
    SettingType.SECURITY: 16,
}

# Frame types the SDK knows at all (PmdDataFrame.PmdDataFrameType); others are refused.
KNOWN_FRAME_TYPES = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14})

# Feature bitmap (the control point's read value), byte 1 and byte 2.
_FEATURE_BITS = (
    (1, 0x01, MeasurementType.ECG),
    (1, 0x02, MeasurementType.PPG),
    (1, 0x04, MeasurementType.ACC),
    (1, 0x08, MeasurementType.PPI),
    (1, 0x20, MeasurementType.GYRO),
    (1, 0x40, MeasurementType.MAGNETOMETER),
    (1, 0x80, MeasurementType.SKIN_TEMP),
    (2, 0x02, MeasurementType.SDK_MODE),
    (2, 0x04, MeasurementType.LOCATION),
    (2, 0x08, MeasurementType.PRESSURE),
    (2, 0x10, MeasurementType.TEMPERATURE),
    (2, 0x20, MeasurementType.OFFLINE_RECORDING),
    (2, 0x40, MeasurementType.OFFLINE_HR),
)

_SENSOR_TYPES: dict[Sensor, MeasurementType] = {"acc": MeasurementType.ACC, "gyro": MeasurementType.GYRO}


def _int32(value: int) -> int:
    """Two's-complement wrap to 32 bits, as the SDK's Kotlin Int arithmetic does."""
    return ((value + 0x8000_0000) & 0xFFFF_FFFF) - 0x8000_0000


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if bits and value & (1 << (bits - 1)) else value


def float_from_bits(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFF_FFFF))[0]


def bits_from_float(value: float) -> int:
    return struct.unpack("<i", struct.pack("<f", value))[0]


# --- settings -----------------------------------------------------------------------------


def parse_settings(data: bytes) -> dict[SettingType, tuple[int, ...]]:
    """Settings TLV → {type: values}. Values are read as signed ints like the SDK does;
    FACTOR stays as its float bits (see factor_of)."""
    settings: dict[SettingType, tuple[int, ...]] = {}
    if len(data) <= 1:
        return settings
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise DecodeError("truncated PMD setting")
        try:
            kind = SettingType(data[offset])
        except ValueError:
            raise DecodeError("unknown PMD setting type") from None
        count = data[offset + 1]
        offset += 2
        size = SETTING_SIZES[kind]
        if offset + count * size > len(data):
            raise DecodeError("truncated PMD setting values")
        values = tuple(
            int.from_bytes(data[offset + i * size : offset + (i + 1) * size], "little", signed=True)
            for i in range(count)
        )
        offset += count * size
        settings[kind] = tuple(dict.fromkeys(values))  # the SDK keeps a set; keep first-seen order
    return settings


def encode_settings(selected: Mapping[SettingType, int]) -> bytes:
    """Selected settings → TLV with one value each. FACTOR is the watch's to say, never sent."""
    out = bytearray()
    for kind, value in selected.items():
        if kind == SettingType.FACTOR:
            continue
        size = SETTING_SIZES[kind]
        out += bytes((kind, 1)) + (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    return bytes(out)


def factor_of(settings: Mapping[SettingType, Sequence[int]]) -> float | None:
    values = settings.get(SettingType.FACTOR)
    return float_from_bits(values[0]) if values else None


def parse_features(data: bytes) -> frozenset[MeasurementType]:
    """The control point's read value → measurement types the device can stream."""
    if len(data) < 3:
        raise DecodeError("truncated PMD feature read")
    return frozenset(kind for index, mask, kind in _FEATURE_BITS if data[index] & mask)


# --- control point ------------------------------------------------------------------------


@dataclass(frozen=True)
class PmdControlPointResponse:
    op: ControlPointOp
    measurement_type: int
    status: ResponseStatus
    more: bool
    parameters: bytes


@dataclass(frozen=True)
class PmdMeasurementStopped:
    """The watch stopped these streams on its own (e.g. a watch leaving its exercise view)."""

    measurement_types: tuple[int, ...]


def parse_control_point_response(data: bytes) -> PmdControlPointResponse:
    """[0xF0, op, type, status, more, parameters...] without judging the status."""
    if len(data) < 4:
        raise DecodeError("truncated PMD control point response")
    if data[0] != CONTROL_POINT_RESPONSE_CODE:
        raise DecodeError("not a PMD control point response")
    try:
        op = ControlPointOp(data[1])
    except ValueError:
        raise DecodeError("unknown PMD control point op code") from None
    try:
        status = ResponseStatus(data[3])
    except ValueError:
        raise DecodeError("unknown PMD control point status") from None
    ok = status == ResponseStatus.SUCCESS
    more = ok and len(data) > 4 and data[4] != 0
    parameters = bytes(data[5:]) if ok else b""
    return PmdControlPointResponse(op, data[2] & MEASUREMENT_TYPE_MASK, status, more, parameters)


def encode_control_point_response(
    op: int, measurement_type: int, status: int = ResponseStatus.SUCCESS, parameters: bytes = b"", more: bool = False
) -> bytes:
    """What a watch answers; for virtual watches and tests."""
    return bytes((CONTROL_POINT_RESPONSE_CODE, op, measurement_type, status, int(more))) + parameters


def get_settings_command(kind: MeasurementType) -> bytes:
    return bytes((ControlPointOp.GET_MEASUREMENT_SETTINGS, kind))


def start_command(kind: MeasurementType, selected: Mapping[SettingType, int]) -> bytes:
    return bytes((ControlPointOp.REQUEST_MEASUREMENT_START, kind)) + encode_settings(selected)


def stop_command(kind: MeasurementType) -> bytes:
    return bytes((ControlPointOp.STOP_MEASUREMENT, kind))


# --- data frames --------------------------------------------------------------------------


@dataclass(frozen=True)
class PmdFrame:
    measurement_type: int
    timestamp_ns: int  # of the last sample, ns since 2000-01-01
    frame_type: int
    compressed: bool
    content: bytes


def parse_frame(data: bytes) -> PmdFrame:
    if len(data) < 10:
        raise DecodeError("truncated PMD frame header")
    frame_byte = data[9]
    frame_type = frame_byte & FRAME_TYPE_MASK
    if frame_type not in KNOWN_FRAME_TYPES:
        raise DecodeError("unknown PMD frame type")
    return PmdFrame(
        measurement_type=data[0] & MEASUREMENT_TYPE_MASK,
        timestamp_ns=int.from_bytes(data[1:9], "little"),
        frame_type=frame_type,
        compressed=bool(frame_byte & COMPRESSED_BIT),
        content=bytes(data[10:]),
    )


def encode_frame(measurement_type: int, timestamp_ns: int, frame_type: int, compressed: bool, content: bytes) -> bytes:
    frame_byte = (frame_type & FRAME_TYPE_MASK) | (COMPRESSED_BIT if compressed else 0)
    return bytes((measurement_type,)) + timestamp_ns.to_bytes(8, "little") + bytes((frame_byte,)) + content


def parse_delta_frames(content: bytes, channels: int, resolution: int, signed: bool = True) -> list[list[int]]:
    """Reference sample + delta blocks → samples (ints; float channels as their int32 bits).

    Deviation from the SDK, on purpose: a 1-bit delta of 1 reads as -1 (two's complement);
    the SDK's sign mask (Int.MAX_VALUE shl 0) would turn it into 2147483647.
    """
    width = math.ceil(resolution / 8)
    if len(content) < channels * width:
        raise DecodeError("truncated PMD reference sample")
    reference = []
    for c in range(channels):
        raw = int.from_bytes(content[c * width : (c + 1) * width], "little")
        reference.append(_int32(_signed(raw, resolution) if signed else raw))
    samples = [reference]
    offset = channels * width
    while offset < len(content):
        if offset + 2 > len(content):
            raise DecodeError("truncated PMD delta block header")
        bits, count = content[offset], content[offset + 1]
        offset += 2
        if bits > 32:
            raise DecodeError("PMD delta wider than 32 bits")
        length = math.ceil(bits * count * channels / 8)
        if offset + length > len(content):
            raise DecodeError("truncated PMD delta block")
        if len(samples) + count > MAX_SAMPLES_PER_FRAME:
            raise DecodeError("too many samples in PMD frame")
        packed = int.from_bytes(content[offset : offset + length], "little")
        mask = (1 << bits) - 1
        position = 0
        last = samples[-1]
        for _ in range(count):
            nxt = []
            for c in range(channels):
                delta = _signed((packed >> position) & mask, bits)
                position += bits
                nxt.append(_int32(last[c] + delta))
            samples.append(nxt)
            last = nxt
        offset += length
    return samples


def encode_delta_frames(samples: Sequence[Sequence[int]], resolution: int, block_size: int = 255) -> bytes:
    """Inverse of parse_delta_frames: each block uses the narrowest bit width that fits.
    Samples are ints (int32 bits for float channels)."""
    if not samples:
        raise ValueError("need at least the reference sample")
    width = math.ceil(resolution / 8)
    out = bytearray()
    for value in samples[0]:
        out += (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    deltas = [
        [_int32(b - a) for a, b in zip(prev, cur, strict=True)] for prev, cur in zip(samples, samples[1:], strict=False)
    ]
    for start in range(0, len(deltas), block_size):
        block = deltas[start : start + block_size]
        bits = max((_bit_width(d) for row in block for d in row), default=0)
        packed = 0
        position = 0
        for row in block:
            for d in row:
                packed |= (d & ((1 << bits) - 1)) << position
                position += bits
        out += bytes((bits, len(block))) + packed.to_bytes(math.ceil(position / 8), "little")
    return bytes(out)


def _bit_width(value: int) -> int:
    """Bits a two's-complement field needs to hold value (0 needs 0: an all-zero block)."""
    if value == 0:
        return 0
    return (value.bit_length() if value > 0 else (~value).bit_length()) + 1


def pmd_timestamps(previous_ns: int, frame_ns: int, count: int, sample_rate_hz: float) -> list[int]:
    """Per-sample timestamps (ns) of a frame whose last sample is at frame_ns.

    As the SDK's PmdTimeStampUtils: with a previous frame's timestamp the frame's span is
    split evenly after it; without one (previous_ns == 0) samples are spaced 1/rate back
    from frame_ns. Rounding is half-to-even like Kotlin's round().
    """
    if count <= 0:
        raise DecodeError("PMD frame without samples")
    if previous_ns == 0:
        if sample_rate_hz <= 0:
            raise DecodeError("PMD sample rate unknown")
        delta = 1e9 / sample_rate_hz
    else:
        if frame_ns <= previous_ns:
            raise DecodeError("PMD timestamp not after the previous frame")
        delta = (frame_ns - previous_ns) / count
    if float(frame_ns) < delta * count:  # compared as doubles, like the SDK
        raise DecodeError("PMD timestamps would be negative")
    if previous_ns == 0:
        start = frame_ns - delta * (count - 1)
        if start <= 0:
            raise DecodeError("PMD timestamps would be negative")
    else:
        start = previous_ns + delta
    # min() only matters when float rounding at ~1e17 ns exceeds a sub-ns delta.
    return [min(round(start + delta * i), frame_ns) for i in range(count - 1)] + [frame_ns]


def _raw_values(content: bytes, step: int) -> list[list[int]]:
    stride = 3 * step
    if not content or len(content) % stride:
        raise DecodeError("PMD raw frame length is not whole samples")
    if len(content) // stride > MAX_SAMPLES_PER_FRAME:
        raise DecodeError("too many samples in PMD frame")
    return [
        [int.from_bytes(content[i + c * step : i + (c + 1) * step], "little", signed=True) for c in range(3)]
        for i in range(0, len(content), stride)
    ]


def acc_millig(frame: PmdFrame, factor: float) -> list[tuple[float, float, float]]:
    """ACC frame → samples in mG (model/AccData.kt)."""
    if frame.compressed:
        if frame.frame_type == 0:
            # Arrives in G (Verity Sense); the factor makes G, ×1000 makes mG.
            scale = factor * 1000.0
        elif frame.frame_type == 1:
            scale = factor
        else:
            raise DecodeError("unsupported compressed ACC frame type")
        rows = parse_delta_frames(frame.content, 3, 16)
    else:
        if frame.frame_type not in (0, 1, 2):
            raise DecodeError("unsupported raw ACC frame type")
        rows = _raw_values(frame.content, frame.frame_type + 1)
        scale = 1.0  # the SDK applies no factor to raw ACC frames
    return [(r[0] * scale, r[1] * scale, r[2] * scale) for r in rows]


def gyro_dps(frame: PmdFrame, factor: float) -> list[tuple[float, float, float]]:
    """GYRO frame → samples in deg/s (model/GyrData.kt)."""
    if not frame.compressed:
        raise DecodeError("unsupported raw GYRO frame type")
    if frame.frame_type == 0:
        rows = parse_delta_frames(frame.content, 3, 16)
        return [(r[0] * factor, r[1] * factor, r[2] * factor) for r in rows]
    if frame.frame_type == 1:
        rows = parse_delta_frames(frame.content, 3, 32, signed=False)
        return [
            (float_from_bits(r[0]) * factor, float_from_bits(r[1]) * factor, float_from_bits(r[2]) * factor)
            for r in rows
        ]
    raise DecodeError("unsupported compressed GYRO frame type")


# --- driver -------------------------------------------------------------------------------


@dataclass
class PmdStreamSettings:
    """What to ask for; values the watch does not offer are replaced by its nearest offer."""

    sample_rate: int
    resolution: int = 16
    range: int | None = None


@dataclass
class _StreamState:
    desired: PmdStreamSettings
    available: dict[SettingType, tuple[int, ...]] | None = None
    selected: dict[SettingType, int] = field(default_factory=dict)
    factor: float = 1.0
    unavailable: bool = False


@register
class PolarPmdDriver(WatchDriver):
    """ACC (+ GYRO on Verity Sense) over PMD. Run prepare_commands() first: the settings
    answers pick sample rates the device actually offers (52 Hz Verity Sense, 50 Hz watches)."""

    name = "polar"
    service_uuids = (PMD_SERVICE,)
    notify_uuids = (PMD_CONTROL_POINT, PMD_DATA)
    response_uuids = (PMD_CONTROL_POINT,)
    write_with_response = True
    expects_responses = True

    # How far a frame's implied sample spacing may stray from 1/rate before the previous
    # frame's timestamp is distrusted (a frame was lost, or the clock was set).
    SPACING_TOLERANCE = 0.25

    def __init__(
        self,
        sensors: Iterable[Sensor] = ("acc", "gyro"),
        acc: PmdStreamSettings | None = None,
        gyro: PmdStreamSettings | None = None,
        spacing_from_previous_frame: bool = True,
    ) -> None:
        """spacing_from_previous_frame: as the SDK, spread a frame's samples evenly between the
        previous frame's timestamp and its own (absorbs the sensor clock's drift from the
        nominal rate) whenever that spacing is within SPACING_TOLERANCE of 1/rate. False:
        always step back from the frame's timestamp at exactly 1/rate."""
        super().__init__()
        self.spacing_from_previous_frame = spacing_from_previous_frame
        wanted = tuple(sensors)
        if not set(wanted) <= set(_SENSOR_TYPES):
            raise ValueError(f"Polar PMD streams acc and gyro, not {wanted}")
        self._wanted = wanted
        self._streams: dict[MeasurementType, _StreamState] = {
            MeasurementType.ACC: _StreamState(acc or PmdStreamSettings(52, 16, 8)),
            MeasurementType.GYRO: _StreamState(gyro or PmdStreamSettings(52, 16, 2000)),
        }
        self._previous_ns: dict[tuple[int, int], int] = {}
        self._pending_parameters: dict[tuple[int, int], bytes] = {}
        self.frames_ignored = 0

    @property
    def sensors(self) -> tuple[Sensor, ...]:
        return tuple(s for s in self._wanted if not self._streams[_SENSOR_TYPES[s]].unavailable)

    @property
    def native_rate_hz(self) -> float:
        return float(self._rate(_SENSOR_TYPES[self.sensors[0]] if self.sensors else MeasurementType.ACC))

    def apply_features(self, features: Iterable[MeasurementType]) -> None:
        """Drop wanted sensors the device's feature read does not list."""
        offered = set(features)
        for sensor in self._wanted:
            kind = _SENSOR_TYPES[sensor]
            self._streams[kind].unavailable = kind not in offered

    def selected_settings(self, kind: MeasurementType) -> dict[SettingType, int]:
        state = self._streams[kind]
        desired = {SettingType.SAMPLE_RATE: state.desired.sample_rate, SettingType.RESOLUTION: state.desired.resolution}
        if state.desired.range is not None:
            desired[SettingType.RANGE] = state.desired.range
        if state.available is None:
            return desired
        chosen: dict[SettingType, int] = {}
        for setting, offers in state.available.items():
            if setting in (SettingType.FACTOR, SettingType.SECURITY) or not offers:
                continue
            if setting in desired:
                chosen[setting] = min(offers, key=lambda v, want=desired[setting]: (abs(v - want), -v))
            else:
                chosen[setting] = max(offers)  # as the SDK's maxSettings() does
        return chosen

    def prepare_commands(self) -> list[GattWrite]:
        return [GattWrite(PMD_CONTROL_POINT, get_settings_command(_SENSOR_TYPES[s])) for s in self.sensors]

    def start_commands(self) -> list[GattWrite]:
        writes = []
        for sensor in self.sensors:
            kind = _SENSOR_TYPES[sensor]
            selected = self.selected_settings(kind)
            self._streams[kind].selected = selected
            writes.append(GattWrite(PMD_CONTROL_POINT, start_command(kind, selected)))
        return writes

    def stop_commands(self) -> list[GattWrite]:
        return [GattWrite(PMD_CONTROL_POINT, stop_command(_SENSOR_TYPES[s])) for s in self.sensors]

    def reset(self) -> None:
        super().reset()
        self._previous_ns.clear()
        self._pending_parameters.clear()

    def _rate(self, kind: MeasurementType) -> int:
        state = self._streams[kind]
        rate = state.selected.get(SettingType.SAMPLE_RATE) or self.selected_settings(kind).get(SettingType.SAMPLE_RATE)
        return rate or state.desired.sample_rate

    def parse_response(self, data: bytes) -> PmdControlPointResponse | PmdMeasurementStopped:
        if not data:
            raise DecodeError("empty PMD control point notification")
        if data[0] == ONLINE_MEASUREMENT_STOPPED:
            return PmdMeasurementStopped(tuple(b & MEASUREMENT_TYPE_MASK for b in data[1:]))
        response = parse_control_point_response(data)
        kind = MeasurementType(response.measurement_type) if response.measurement_type in _TYPE_VALUES else None
        if response.status != ResponseStatus.SUCCESS:
            if (
                kind in (MeasurementType.ACC, MeasurementType.GYRO)
                and response.op == ControlPointOp.GET_MEASUREMENT_SETTINGS
                and response.status in _NO_SUCH_SENSOR
            ):
                self._streams[kind].unavailable = True
            raise DecodeError("PMD command refused", status=response.status.name)
        if kind not in (MeasurementType.ACC, MeasurementType.GYRO):
            return response
        key = (response.op, kind)
        parameters = self._pending_parameters.pop(key, b"") + response.parameters
        if response.more:
            self._pending_parameters[key] = parameters
            return response
        state = self._streams[kind]
        if response.op == ControlPointOp.GET_MEASUREMENT_SETTINGS:
            state.available = parse_settings(parameters)
        elif response.op == ControlPointOp.REQUEST_MEASUREMENT_START:
            factor = factor_of(parse_settings(parameters))
            if factor is not None:
                if not math.isfinite(factor) or factor == 0:
                    raise DecodeError("PMD factor is not a usable number")
                state.factor = factor
        return response

    def decode(self, char_uuid: str, data: bytes, received_at: float) -> list[ImuSample]:
        self._check_received_at(received_at)
        uuid = self._char(char_uuid)
        data = bytes(data)
        if uuid == PMD_CONTROL_POINT:
            self.parse_response(data)
            return []
        if uuid != PMD_DATA:
            raise DecodeError("not a PMD characteristic")
        frame = parse_frame(data)
        if frame.measurement_type not in (MeasurementType.ACC, MeasurementType.GYRO):
            self.frames_ignored += 1
            return []
        kind = MeasurementType(frame.measurement_type)
        key = (kind, frame.frame_type)
        previous = self._previous_ns.get(key, 0)
        # Recorded before the content is parsed, as the SDK does: a corrupt body must not
        # break the timing of the frames after it.
        self._previous_ns[key] = frame.timestamp_ns
        state = self._streams[kind]
        if kind == MeasurementType.ACC:
            values = [tuple(v * STANDARD_GRAVITY / 1000.0 for v in s) for s in acc_millig(frame, state.factor)]
            sensor: Sensor = "acc"
        else:
            values = [tuple(v * DEG_TO_RAD for v in s) for s in gyro_dps(frame, state.factor)]
            sensor = "gyro"
        rate = self._rate(kind)
        if previous and not (
            self.spacing_from_previous_frame and self._plausible(previous, frame.timestamp_ns, len(values), rate)
        ):
            previous = 0
        stamps = pmd_timestamps(previous, frame.timestamp_ns, len(values), rate)
        times = [ns / 1e9 + POLAR_EPOCH_UNIX_S for ns in stamps]
        return self._emit(sensor, times, values)

    def _plausible(self, previous_ns: int, frame_ns: int, count: int, rate: int) -> bool:
        if frame_ns <= previous_ns:
            return False
        if rate <= 0:
            return True
        spacing = (frame_ns - previous_ns) / count
        nominal = 1e9 / rate
        return abs(spacing - nominal) <= self.SPACING_TOLERANCE * nominal


_TYPE_VALUES = frozenset(int(t) for t in MeasurementType)
# Answers to a settings query meaning "this device has no such sensor" (e.g. GYRO on an OH1).
_NO_SUCH_SENSOR = (ResponseStatus.ERROR_INVALID_MEASUREMENT_TYPE, ResponseStatus.ERROR_NOT_SUPPORTED)


def encode_acc_frame(
    timestamp_ns: int, samples_mg: Sequence[Sequence[int]], compressed: bool = True, frame_type: int = 1
) -> bytes:
    """ACC data frame for virtual watches: compressed type 1 (mG, factor 1) or raw type 0/1/2."""
    if compressed:
        return encode_frame(MeasurementType.ACC, timestamp_ns, frame_type, True, encode_delta_frames(samples_mg, 16))
    step = frame_type + 1
    content = b"".join(int(v).to_bytes(step, "little", signed=True) for s in samples_mg for v in s)
    return encode_frame(MeasurementType.ACC, timestamp_ns, frame_type, False, content)


def encode_gyro_frame(timestamp_ns: int, samples: Sequence[Sequence[int]]) -> bytes:
    """GYRO compressed type 0 frame (int16 counts; the start response's factor scales them)."""
    return encode_frame(MeasurementType.GYRO, timestamp_ns, 0, True, encode_delta_frames(samples, 16))
