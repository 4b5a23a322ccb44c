"""Bangle.js: the driver is chosen from the services the watch offers."""

from __future__ import annotations

from l2mu.firmware_bridge.bangle import (
    NORDIC_UART_SERVICE,
    BangleDriver,
)
from l2mu.firmware_bridge.driver import driver_by_name, pick_driver
from l2mu.firmware_bridge.l2mu_profile import (
    L2MU_CONTROL_CHAR,
    L2MU_SERVICE,
    L2muDriver,
)


def test_driver_selection() -> None:
    assert pick_driver([L2MU_SERVICE, NORDIC_UART_SERVICE]) is BangleDriver
    assert pick_driver([L2MU_SERVICE]) is L2muDriver
    assert driver_by_name("bangle") is BangleDriver
    driver = BangleDriver()
    assert driver.sensors == ("acc",)
    assert driver.start_commands() == [(L2MU_CONTROL_CHAR, bytes.fromhex("01c40900"))]
