"""Everything that knows a watch's BLE protocol: decoders from notification bytes to SI samples.

One module per watch family (polar_pmd, infinitime, metawear, l2mu_profile, bangle), all
behind the `WatchDriver` interface of `driver`; PROTOCOL.md specifies the open L2MU IMU
profile and firmware/bangle/ holds its Bangle.js 2 reference firmware.
"""

from l2mu.firmware_bridge.driver import (
    DecodeError,
    GattWrite,
    ImuSample,
    UnknownDriverError,
    WatchDriver,
    driver_by_name,
    driver_names,
    pick_driver,
)

__all__ = [
    "DecodeError",
    "GattWrite",
    "ImuSample",
    "UnknownDriverError",
    "WatchDriver",
    "driver_by_name",
    "driver_names",
    "pick_driver",
]
