"""PineTime running InfiniTime: the Motion Service's raw accelerometer characteristic.

Facts from InfiniTime (github.com/InfiniTimeOrg/InfiniTime): doc/MotionService.md,
src/components/ble/MotionService.cpp, src/components/motion/MotionController.cpp and
src/systemtask/SystemTask.cpp.

- Service 00030000-78fc-48fe-8e23-433b3a1942d0; raw motion values 00030002-…: three
  int16 (x, y, z), little-endian (the nRF52's native order; the firmware sends its int16
  array as-is), in "binary milli-g": 1 g = 1024. Read + notify.
- The firmware polls the accelerometer every 100 ms (10 Hz) and notifies only when the
  reading differs from the previous one, so a perfectly still watch goes quiet.
- Step count (00030001-…, one uint32) exists and is ignored here.
- No start/stop command: subscribing to notifications is the whole protocol.
- The packets carry no timestamp, so a sample's time is the runner's `received_at`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from l2mu.firmware_bridge.driver import (
    STANDARD_GRAVITY,
    DecodeError,
    GattWrite,
    ImuSample,
    Sensor,
    WatchDriver,
    register,
)

MOTION_SERVICE = "00030000-78fc-48fe-8e23-433b3a1942d0"
STEP_COUNT_CHAR = "00030001-78fc-48fe-8e23-433b3a1942d0"
MOTION_VALUES_CHAR = "00030002-78fc-48fe-8e23-433b3a1942d0"

LSB_PER_G = 1024
POLL_RATE_HZ = 10.0
_MOTION = struct.Struct("<3h")


def parse_motion_values(data: bytes) -> tuple[int, int, int]:
    if len(data) != _MOTION.size:
        raise DecodeError("InfiniTime motion value is not 3 × int16")
    x, y, z = _MOTION.unpack(data)
    return x, y, z


def encode_motion_values(xyz_ms2: Sequence[float]) -> bytes:
    """m/s² → the characteristic's bytes (rounded, saturated to int16); for virtual watches."""
    counts = [max(-32768, min(32767, round(v / STANDARD_GRAVITY * LSB_PER_G))) for v in xyz_ms2]
    return _MOTION.pack(*counts)


@register
class InfiniTimeDriver(WatchDriver):
    name = "infinitime"
    service_uuids = (MOTION_SERVICE,)
    notify_uuids = (MOTION_VALUES_CHAR,)

    @property
    def sensors(self) -> tuple[Sensor, ...]:
        return ("acc",)

    @property
    def native_rate_hz(self) -> float:
        return POLL_RATE_HZ

    def start_commands(self) -> list[GattWrite]:
        return []

    def stop_commands(self) -> list[GattWrite]:
        return []

    def decode(self, char_uuid: str, data: bytes, received_at: float) -> list[ImuSample]:
        t = self._check_received_at(received_at)
        uuid = self._char(char_uuid)
        if uuid == STEP_COUNT_CHAR:
            if len(data) != 4:
                raise DecodeError("InfiniTime step count is not a uint32")
            return []
        if uuid != MOTION_VALUES_CHAR:
            raise DecodeError("not an InfiniTime motion characteristic")
        counts = parse_motion_values(bytes(data))
        return self._emit("acc", [t], [tuple(c / LSB_PER_G * STANDARD_GRAVITY for c in counts)])
