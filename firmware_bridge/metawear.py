"""MbientLab MetaWear / MetaMotion (R, RL: BMI160; S: BMI270) register protocol.

Facts from MetaWear-SDK-Cpp (github.com/mbientlab/MetaWear-SDK-Cpp): src/metawear/impl/
cpp/metawearboard.cpp (UUIDs, packed-data handling), src/metawear/core/module.h (module
ids), src/metawear/sensor/cpp/accelerometer_bosch*.{h,cpp} and gyro_bosch*.{h,cpp}
(registers, config bit fields, scales), src/metawear/core/cpp/datasignal.cpp (subscribe)
and the byte-level expectations in test/test_accelerometer_bmi160.py,
test/test_accelerometer_bmi270.py, test/test_gyro_bmi160.py and test/common.py.

Every command and notification is [module id, register id, payload...]; a read sets bit
7 of the register id (0x80 | register) and the answer comes back with the same header.
Commands go to 326a9001-… (write without response), everything arrives on 326a9006-….

- Streaming: configure (DATA_CONFIG / CONFIG), subscribe to the data register
  ([module, register, 1]), enable the data interrupt ([module, 2, 1, 0]), power on
  ([module, 1, 1]). Stop in reverse with 0s.
- Data: int16 x, y, z. "Packed" registers carry three consecutive samples in one
  notification, which is what makes 50-100 Hz fit through BLE.
- Scale: acc counts per g from the range (±2/4/8/16 g → 16384/8192/4096/2048); gyro
  counts per deg/s (±2000/1000/500/250/125 → 16.4/32.8/65.6/131.2/262.4).
- Notifications carry no timestamp (the SDK stamps them with its own clock on arrival,
  all three samples of a packed notification alike). Here a notification's last sample
  gets `received_at` and packed samples before it are spaced back by 1/rate.
- The chip variant changes register ids, so read the module info first
  (prepare_commands): accelerometer implementation 1 = BMI160, 4 = BMI270; gyro 0 = BMI160,
  1 = BMI270.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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

METAWEAR_SERVICE = "326a9000-85cb-9195-d9dd-464cfbbae75a"
METAWEAR_COMMAND_CHAR = "326a9001-85cb-9195-d9dd-464cfbbae75a"
METAWEAR_NOTIFY_CHAR = "326a9006-85cb-9195-d9dd-464cfbbae75a"

MODULE_ACCELEROMETER = 0x03
MODULE_GYRO = 0x13
READ_BIT = 0x80
INFO_REGISTER = 0x00

# Registers both modules share.
POWER_MODE = 0x01
DATA_INTERRUPT_ENABLE = 0x02
CONFIG = 0x03

Variant = Literal["bmi160", "bmi270"]


@dataclass(frozen=True)
class _Registers:
    acc_data: int
    acc_packed: int
    gyro_data: int
    gyro_packed: int
    acc_impl: int
    gyro_impl: int


REGISTERS: dict[Variant, _Registers] = {
    "bmi160": _Registers(acc_data=0x04, acc_packed=0x1C, gyro_data=0x05, gyro_packed=0x07, acc_impl=1, gyro_impl=0),
    "bmi270": _Registers(acc_data=0x04, acc_packed=0x05, gyro_data=0x04, gyro_packed=0x05, acc_impl=4, gyro_impl=1),
}
# The packed registers exist on BMI160 boards from module revision 1 (PACKED_ACC_REVISION,
# PACKED_ROT_REVISION); BMI270 boards always have them.
PACKED_MIN_REVISION = 1

ACC_ODRS_HZ = (0.78125, 1.5625, 3.125, 6.25, 12.5, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
ACC_RANGES_G = (2, 4, 8, 16)
ACC_LSB_PER_G = {2: 16384.0, 4: 8192.0, 8: 4096.0, 16: 2048.0}
_BMI160_RANGE_BITS = {2: 0x3, 4: 0x5, 8: 0x8, 16: 0xC}
_BMI270_RANGE_BITS = {2: 0x0, 4: 0x1, 8: 0x2, 16: 0x3}
GYRO_ODR_CODES = {25.0: 6, 50.0: 7, 100.0: 8, 200.0: 9, 400.0: 10, 800.0: 11, 1600.0: 12, 3200.0: 13}
GYRO_RANGES_DPS = (2000, 1000, 500, 250, 125)  # index = the config's range field
GYRO_LSB_PER_DPS = (16.4, 32.8, 65.6, 131.2, 262.4)
_XYZ = struct.Struct("<3h")


def nearest(options: Sequence[float], want: float) -> float:
    return min(options, key=lambda v: (abs(v - want), -v))


def acc_config(variant: Variant, rate_hz: float, range_g: int) -> bytes:
    """The two DATA_CONFIG bytes: [odr | bwp << 4 | us << 7, range bits]."""
    odr = ACC_ODRS_HZ.index(rate_hz) + 1
    slow = rate_hz < 12.5
    if variant == "bmi160":
        # Below 12.5 Hz the BMI160 needs undersampling on with bwp 0; above, normal mode bwp 2.
        us, bwp = (1, 0) if slow else (0, 2)
        range_bits = _BMI160_RANGE_BITS[range_g]
    else:
        # The BMI270's bit 7 is the filter-performance bit: on, except below 12.5 Hz.
        us, bwp = (0 if slow else 1), 2
        range_bits = _BMI270_RANGE_BITS[range_g]
    return bytes((odr | bwp << 4 | us << 7, range_bits))


def acc_range_from_config(variant: Variant, config: bytes) -> int | None:
    bits = config[1] & (0x0F if variant == "bmi160" else 0x07)
    table = _BMI160_RANGE_BITS if variant == "bmi160" else _BMI270_RANGE_BITS
    return next((g for g, b in table.items() if b == bits), None)


def gyro_config(rate_hz: float, range_dps: int) -> bytes:
    """The two gyro CONFIG bytes: [odr | bwp(2) << 4, range index]."""
    return bytes((GYRO_ODR_CODES[rate_hz] | 2 << 4, GYRO_RANGES_DPS.index(range_dps)))


@dataclass(frozen=True)
class ModuleInfo:
    module: int
    present: bool
    implementation: int | None
    revision: int | None


def parse_module_info(data: bytes) -> ModuleInfo:
    """Answer to [module, 0x80]: [module, 0x80, implementation, revision, extra...]."""
    if len(data) < 2 or data[1] != READ_BIT | INFO_REGISTER:
        raise DecodeError("not a MetaWear module info response")
    present = len(data) > 2
    if present and len(data) < 4:
        raise DecodeError("truncated MetaWear module info")
    return ModuleInfo(data[0], present, data[2] if present else None, data[3] if present else None)


def encode_xyz(counts: Sequence[Sequence[int]]) -> bytes:
    flat = [max(-32768, min(32767, int(v))) for c in counts for v in c]
    return struct.pack(f"<{len(flat)}h", *flat)


def encode_notification(module: int, register_id: int, counts: Sequence[Sequence[int]]) -> bytes:
    """A data notification as the board sends it; for virtual watches and tests."""
    return bytes((module, register_id)) + encode_xyz(counts)


@register
class MetaWearDriver(WatchDriver):
    name = "metawear"
    service_uuids = (METAWEAR_SERVICE,)
    notify_uuids = (METAWEAR_NOTIFY_CHAR,)
    response_uuids = (METAWEAR_NOTIFY_CHAR,)

    def __init__(
        self,
        variant: Variant = "bmi160",
        sensors: Sequence[Sensor] = ("acc", "gyro"),
        rate_hz: float = 50.0,
        acc_range_g: int = 8,
        gyro_range_dps: int = 2000,
        packed: bool = True,
    ) -> None:
        super().__init__()
        if variant not in REGISTERS:
            raise ValueError(f"MetaWear variant must be bmi160 or bmi270, not {variant!r}")
        if acc_range_g not in ACC_RANGES_G or gyro_range_dps not in GYRO_RANGES_DPS:
            raise ValueError("unsupported MetaWear range")
        self.variant: Variant = variant
        self._wanted = tuple(sensors)
        self._gyro_missing = False
        # One rate for both sensors, so their streams share a grid: the nearest both offer.
        self.rate_hz = nearest(sorted(set(ACC_ODRS_HZ) & set(GYRO_ODR_CODES)), rate_hz)
        self.acc_range_g = acc_range_g
        self.gyro_range_dps = gyro_range_dps
        self.packed = packed

    @property
    def sensors(self) -> tuple[Sensor, ...]:
        return tuple(s for s in self._wanted if not (s == "gyro" and self._gyro_missing))

    @property
    def native_rate_hz(self) -> float:
        return self.rate_hz

    @property
    def registers(self) -> _Registers:
        return REGISTERS[self.variant]

    def _acc_register(self) -> int:
        return self.registers.acc_packed if self.packed else self.registers.acc_data

    def _gyro_register(self) -> int:
        return self.registers.gyro_packed if self.packed else self.registers.gyro_data

    def prepare_commands(self) -> list[GattWrite]:
        return [
            GattWrite(METAWEAR_COMMAND_CHAR, bytes((MODULE_ACCELEROMETER, READ_BIT | INFO_REGISTER))),
            GattWrite(METAWEAR_COMMAND_CHAR, bytes((MODULE_GYRO, READ_BIT | INFO_REGISTER))),
        ]

    def start_commands(self) -> list[GattWrite]:
        acc = MODULE_ACCELEROMETER
        gyro = MODULE_GYRO
        use_gyro = "gyro" in self.sensors
        use_acc = "acc" in self.sensors
        cmds: list[bytes] = []
        if use_acc:
            cmds.append(bytes((acc, CONFIG)) + acc_config(self.variant, self.rate_hz, self.acc_range_g))
        if use_gyro:
            cmds.append(bytes((gyro, CONFIG)) + gyro_config(self.rate_hz, self.gyro_range_dps))
        if use_acc:
            cmds.append(bytes((acc, self._acc_register(), 1)))
        if use_gyro:
            cmds.append(bytes((gyro, self._gyro_register(), 1)))
        if use_acc:
            cmds.append(bytes((acc, DATA_INTERRUPT_ENABLE, 1, 0)))
        if use_gyro:
            cmds.append(bytes((gyro, DATA_INTERRUPT_ENABLE, 1, 0)))
        if use_acc:
            # mbl_mw_acc_bosch_start: a BMI270 without filter performance mode wants 2.
            cmds.append(bytes((acc, POWER_MODE, 1)))
        if use_gyro:
            cmds.append(bytes((gyro, POWER_MODE, 1)))
        return [GattWrite(METAWEAR_COMMAND_CHAR, c) for c in cmds]

    def stop_commands(self) -> list[GattWrite]:
        acc = MODULE_ACCELEROMETER
        gyro = MODULE_GYRO
        cmds: list[bytes] = []
        if "gyro" in self.sensors:
            cmds += [
                bytes((gyro, POWER_MODE, 0)),
                bytes((gyro, DATA_INTERRUPT_ENABLE, 0, 1)),
                bytes((gyro, self._gyro_register(), 0)),
            ]
        if "acc" in self.sensors:
            cmds += [
                bytes((acc, POWER_MODE, 0)),
                bytes((acc, DATA_INTERRUPT_ENABLE, 0, 1)),
                bytes((acc, self._acc_register(), 0)),
            ]
        return [GattWrite(METAWEAR_COMMAND_CHAR, c) for c in cmds]

    def parse_response(self, data: bytes) -> ModuleInfo | bytes:
        """Module info answers set the chip variant; config read answers set the range."""
        if len(data) < 2:
            raise DecodeError("truncated MetaWear response")
        module, register_id = data[0], data[1]
        if register_id == READ_BIT | INFO_REGISTER:
            info = parse_module_info(data)
            self._apply_info(info)
            return info
        if register_id == READ_BIT | CONFIG and module in (MODULE_ACCELEROMETER, MODULE_GYRO):
            if len(data) < 4:
                raise DecodeError("truncated MetaWear config response")
            if module == MODULE_ACCELEROMETER:
                range_g = acc_range_from_config(self.variant, data[2:4])
                if range_g is None:
                    raise DecodeError("unknown MetaWear accelerometer range")
                self.acc_range_g = range_g
            else:
                index = data[3] & 0x07
                if index >= len(GYRO_RANGES_DPS):
                    raise DecodeError("unknown MetaWear gyro range")
                self.gyro_range_dps = GYRO_RANGES_DPS[index]
            return bytes(data[2:4])
        raise DecodeError("not a MetaWear response this driver reads")

    def _apply_info(self, info: ModuleInfo) -> None:
        if info.module == MODULE_ACCELEROMETER:
            if not info.present:
                raise DecodeError("MetaWear board has no accelerometer")
            by_impl = {r.acc_impl: v for v, r in REGISTERS.items()}
            if info.implementation not in by_impl:
                raise DecodeError("unsupported MetaWear accelerometer")
            self.variant = by_impl[info.implementation]
            if self.variant == "bmi160" and (info.revision or 0) < PACKED_MIN_REVISION:
                self.packed = False
        elif info.module == MODULE_GYRO:
            self._gyro_missing = not info.present
            if info.present and self.variant == "bmi160" and (info.revision or 0) < PACKED_MIN_REVISION:
                self.packed = False

    def decode(self, char_uuid: str, data: bytes, received_at: float) -> list[ImuSample]:
        now = self._check_received_at(received_at)
        if self._char(char_uuid) != METAWEAR_NOTIFY_CHAR:
            raise DecodeError("not the MetaWear notify characteristic")
        data = bytes(data)
        if len(data) < 2:
            raise DecodeError("truncated MetaWear notification")
        module, register_id = data[0], data[1]
        if register_id & READ_BIT:
            if register_id in (READ_BIT | INFO_REGISTER, READ_BIT | CONFIG):
                self.parse_response(data)
            return []
        regs = self.registers
        if module == MODULE_ACCELEROMETER and register_id in (regs.acc_data, regs.acc_packed):
            scale = STANDARD_GRAVITY / ACC_LSB_PER_G[self.acc_range_g]
            return self._samples("acc", data[2:], register_id == regs.acc_packed, scale, now)
        if module == MODULE_GYRO and register_id in (regs.gyro_data, regs.gyro_packed):
            scale = DEG_TO_RAD / GYRO_LSB_PER_DPS[GYRO_RANGES_DPS.index(self.gyro_range_dps)]
            return self._samples("gyro", data[2:], register_id == regs.gyro_packed, scale, now)
        return []  # other modules (button, battery, logging...) are not IMU data

    def _samples(self, sensor: Sensor, payload: bytes, packed: bool, scale: float, now: float) -> list[ImuSample]:
        count = len(payload) // _XYZ.size
        if len(payload) % _XYZ.size or count == 0 or (not packed and count != 1):
            raise DecodeError("MetaWear data is not whole int16 x/y/z samples")
        values = [tuple(c * scale for c in _XYZ.unpack_from(payload, i * _XYZ.size)) for i in range(count)]
        period = 1.0 / self.rate_hz
        times = [now - (count - 1 - i) * period for i in range(count)]
        return self._emit(sensor, times, values)
