"""Bangle.js 2 running firmware/bangle/l2mu-imu.js, which speaks the L2MU IMU profile.

Bangle.js 2 has an accelerometer only (Kionix KX023), so this is the L2MU driver with
sensors ("acc",). The firmware runs the KX023 at ±4 g (8192 counts per g, matching the
`accel` event's g values) and at one of its output data rates 12.5/25/50/100 Hz, chosen
from START's requested rate (see BANGLE_RATES_HZ and the firmware's pickRate).

Espruino exposes the Nordic UART service next to ours (the firmware keeps it on so the
Web IDE still connects), which is what lets `pick_driver` prefer this driver over the
generic "l2mu" one.
"""

from __future__ import annotations

from pathlib import Path

from l2mu.firmware_bridge.driver import Sensor, register
from l2mu.firmware_bridge.l2mu_profile import L2muDriver

NORDIC_UART_SERVICE = "6e400001-b5a3-f393-e0a9-e50e24dcca9e"
FIRMWARE_DIR = Path(__file__).resolve().parent / "firmware" / "bangle"
FIRMWARE_PATH = FIRMWARE_DIR / "l2mu-imu.js"
BANGLE_RATES_HZ = (12.5, 25.0, 50.0, 100.0)
BANGLE_ACC_RANGE_G = 4


def bangle_rate(requested_hz: float) -> float:
    """The rate the firmware picks for a START request (closest; the higher on a tie)."""
    if requested_hz <= 0:
        return 12.5
    return min(BANGLE_RATES_HZ, key=lambda r: (abs(r - requested_hz), -r))


@register
class BangleDriver(L2muDriver):
    name = "bangle"
    hint_service_uuids = (NORDIC_UART_SERVICE,)
    default_sensors: tuple[Sensor, ...] = ("acc",)
    default_rate_hz = 25.0

    @property
    def native_rate_hz(self) -> float:
        return self._reported_rate or bangle_rate(self.rate_hz)
