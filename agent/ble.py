"""Live watches over Bluetooth LE: bleak's BlueZ backend, bleak-retry-connector and a WatchDriver.

`BleSource` is a `Source` for the agent and for `record`. Its stream:

1. once, at start: closes connections BlueZ still holds to the watch from an earlier process that
   died without disconnecting (`close_stale_connections_by_address`);
2. finds the watch (known to BlueZ, else by scanning for up to `scan_timeout_s`; not found →
   one-line error), connects with `establish_connection`, picks the driver (`--protocol auto`:
   from the GATT services) and drives it as `firmware_bridge/driver.py` describes: notifications
   on, prepare commands (waiting for each answer where the watch sends one), start commands;
3. yields `WatchConnected` (the sensors the watch really streams), then the decoded samples;
4. on link loss yields `StreamGap` and reconnects with exponential backoff until
   `retry_budget_s` has passed since the loss; then (or for a connection that can never work —
   no matching service, a characteristic missing) it raises `BleError`, one line, and only this
   watch stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from l2mu.agent.events import SourceEvent, StreamGap, WatchConnected
from l2mu.agent.intake import NotificationFeed, NotificationSource, Notify, SetupError, set_up
from l2mu.agent.settings import DEFAULTS
from l2mu.agent.sources import MAC_RE, SourceError, topic_safe
from l2mu.firmware_bridge.driver import (
    UnknownDriverError,
    WatchDriver,
    driver_by_name,
    driver_names,
    normalize_uuid,
    pick_driver,
)

log = logging.getLogger(__name__)

# Advertised names of watch families that do not advertise their IMU service.
NAME_HINTS = {"polar": ("Polar ",), "infinitime": ("InfiniTime", "Pinetime"), "metawear": ("MetaWear", "MetaMotion"),
              "bangle": ("Bangle.js",)}


_scan_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _scan_lock() -> asyncio.Lock:
    """One scan at a time per event loop: BlueZ allows each D-Bus client one discovery session
    (a second StartDiscovery fails with InProgress), and bleak shares one connection per loop."""
    loop = asyncio.get_running_loop()
    lock = _scan_locks.get(loop)
    if lock is None:
        lock = _scan_locks[loop] = asyncio.Lock()
    return lock


class BleError(SourceError):
    """A live watch cannot be used; the message is one line and names the watch."""


class _Permanent(BleError):
    """Retrying cannot help (the device is not such a watch)."""


class _Transient(BleError):
    """This attempt failed; a later one may work."""


@dataclass
class BleOptions:
    scan_timeout_s: float = DEFAULTS.scan_timeout  # how long to look for a watch BlueZ does not know yet
    retry_budget_s: float = DEFAULTS.retry_budget  # how long after a link loss (or a failed first connection)
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 15.0
    response_timeout_s: float = 5.0  # for a watch's answer to one command
    intake_queue: int = DEFAULTS.intake_queue
    intake_max_age_s: float = DEFAULTS.intake_max_age_s
    adapter: str | None = None  # hci0, …; None: BlueZ's default

    def __post_init__(self) -> None:
        for name in ("scan_timeout_s", "retry_budget_s", "backoff_initial_s", "response_timeout_s"):
            if not getattr(self, name) > 0:
                raise BleError(f"{name.removesuffix('_s').replace('_', '-')} must be > 0 seconds")

    def bluez(self) -> dict[str, Any]:
        return {"adapter": self.adapter} if self.adapter else {}


def protocol_choices() -> list[str]:
    return ["auto", *driver_names()]


def check_protocol(protocol: str) -> str:
    name = protocol.strip().lower()
    if name not in protocol_choices():
        raise BleError(f"--protocol {protocol!r}: expected one of {', '.join(protocol_choices())}")
    return name


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def recognise(service_uuids: Iterable[str], name: str | None) -> str | None:
    """The watch protocol an advertisement (services, else name) points to, or None."""
    try:
        return pick_driver(service_uuids).name
    except (UnknownDriverError, ValueError):
        pass
    for protocol, prefixes in NAME_HINTS.items():
        if name and name.startswith(prefixes):
            return protocol
    return None


def _bluetooth_unavailable(exc: BaseException) -> _Permanent | None:
    """A one-line error for 'there is no Bluetooth here at all', or None for other failures."""
    from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError

    if isinstance(exc, BleakBluetoothNotAvailableError):
        return _Permanent(f"Bluetooth is not available: {one_line(exc)} (l2mu-agent doctor checks the set-up)")
    if isinstance(exc, BleakDBusError) and exc.dbus_error in ("org.freedesktop.DBus.Error.ServiceUnknown",
                                                              "org.freedesktop.DBus.Error.NameHasNoOwner"):
        return _Permanent("BlueZ is not running: nothing owns org.bluez on the system D-Bus (is bluetoothd "
                          "running? l2mu-agent doctor checks the set-up)")
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return _Permanent(f"cannot reach the system D-Bus ({one_line(exc)}); is dbus running? "
                          f"(l2mu-agent doctor checks the set-up)")
    return None


@dataclass
class _Connection:
    client: Any  # BleakClient
    driver: WatchDriver
    name: str


class _BleakLink:
    """bleak's client as the intake's GattLink (l2mu.agent.intake.set_up)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def has_characteristic(self, char_uuid: str) -> bool:
        return self.client.services.get_characteristic(char_uuid) is not None

    async def start_notify(self, char_uuid: str, callback: Notify) -> None:
        def on_notification(char: Any, data: bytearray) -> None:
            callback(normalize_uuid(char.uuid), data, None, None)  # stamped on arrival, now

        await self.client.start_notify(self.client.services.get_characteristic(char_uuid), on_notification)

    async def write(self, char_uuid: str, data: bytes, response: bool) -> None:
        await self.client.write_gatt_char(char_uuid, data, response=response)


class BleSource:
    """One watch at a Bluetooth address, as a stream of samples that survives link losses."""

    speed = 1.0

    def __init__(self, address: str, protocol: str = "auto", options: BleOptions | None = None,
                 watch_id: str | None = None) -> None:
        if not MAC_RE.match(address):
            raise BleError(f"{address!r} is not a Bluetooth address like AA:BB:CC:DD:EE:FF")
        self.address = address.upper()
        self.protocol = check_protocol(protocol)
        self.options = options or BleOptions()
        self.watch_id = watch_id or topic_safe(self.address)
        self.sensors: set[str] = set()
        self.sensors_known = False
        self.driver: WatchDriver | None = None
        # The same bounded intake as every other watch's; made at the first connection, once the driver is known.
        self.intake: NotificationSource | None = None
        self.connections = 0
        self.connecting = False  # looking for the watch or (re)connecting, on its own budget
        self._generation = 0  # which connection a disconnect callback belongs to

    @property
    def feed(self) -> NotificationFeed | None:
        return self.intake.feed if self.intake is not None else None

    # --- the stream --------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[SourceEvent]:
        await self._close_stale()
        conn: _Connection | None = None
        try:
            self.connecting = True
            conn = await self._first_connection()
            self.connecting = False
            while True:
                self.sensors, self.sensors_known = set(conn.driver.sensors), True
                yield WatchConnected(tuple(conn.driver.sensors), conn.driver.name, conn.name)
                assert self.intake is not None
                async for item in self.intake.connection():  # until the link is gone
                    yield item
                log.warning("%s: link lost; reconnecting for up to %g s", self.address, self.options.retry_budget_s)
                lost, conn = conn, None
                self.connecting = True
                await self._disconnect(lost)  # releases bleak's per-connection D-Bus connection
                for sensor in lost.driver.sensors:
                    yield StreamGap(sensor, "link lost")
                conn = await self._reconnect(time.monotonic() + self.options.retry_budget_s, "link lost")
                self.connecting = False
        finally:
            self.connecting = False
            if conn is not None:
                await self._disconnect(conn)

    async def _first_connection(self) -> _Connection:
        try:
            device = await self._find_device(self.options.scan_timeout_s)
        except _Transient as exc:  # never seen: almost always a wrong address or a watch that is off
            raise _Permanent(str(exc)) from None
        return await self._reconnect(time.monotonic() + self.options.retry_budget_s, "first connection", device)

    async def _reconnect(self, deadline: float, why: str, device: Any = None) -> _Connection:
        delay = self.options.backoff_initial_s
        attempt = 0
        last = "no attempt finished"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if why == "first connection":
                    raise BleError(f"{self.address}: found, but no connection worked within "
                                   f"{self.options.retry_budget_s:g} s ({attempt} attempt(s)); last error: {last}")
                raise BleError(f"{self.address}: gave up after {self.options.retry_budget_s:g} s of reconnecting "
                               f"({why}; {attempt} attempt(s)); last error: {last}")
            attempt += 1
            try:
                async with asyncio.timeout(remaining):
                    conn = await self._connect_once(device, min(self.options.scan_timeout_s, remaining))
                if attempt > 1 or why != "first connection":
                    log.info("%s: connected again (attempt %d)", self.address, attempt)
                return conn
            except _Permanent:
                raise
            except _Transient as exc:
                last = str(exc)
            except TimeoutError:
                last = "timed out"
            except Exception as exc:  # bleak and dbus-fast raise many kinds; each attempt's reason is logged
                if (unavailable := _bluetooth_unavailable(exc)) is not None:
                    raise unavailable from None
                last = one_line(exc)
            device = None  # look it up again: BlueZ may have dropped and re-created it
            wait = min(delay, max(0.0, deadline - time.monotonic()))
            log.warning("%s: connection attempt %d failed: %s; next in %.1f s", self.address, attempt, last, wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.options.backoff_max_s)

    async def _close_stale(self) -> None:
        from bleak.backends.bluezdbus.manager import get_global_bluez_manager
        from bleak_retry_connector import close_stale_connections_by_address

        try:
            # bleak-retry-connector reads the manager bleak made for this loop even while it is still loading
            # BlueZ's objects; with several watches starting at once it would see no device and clean nothing.
            await get_global_bluez_manager()
            await close_stale_connections_by_address(self.address)
        except Exception as exc:  # cleaning is best effort; connecting reports real problems
            log.debug("%s: could not check for stale connections: %s", self.address, exc)

    async def _find_device(self, timeout: float) -> Any:
        from bleak import BleakScanner
        from bleak_retry_connector import get_device

        device = await get_device(self.address)
        if device is None:
            async with _scan_lock():
                device = await get_device(self.address)  # another watch's scan may have come across it
                if device is None:
                    try:
                        device = await BleakScanner.find_device_by_address(self.address, timeout=timeout,
                                                                           bluez=self.options.bluez())
                    except Exception as exc:
                        if (unavailable := _bluetooth_unavailable(exc)) is not None:
                            raise unavailable from None
                        raise
        if device is None:
            raise _Transient(f"{self.address}: no such watch found within {timeout:g} s of scanning; is it on, "
                             f"in range and not connected to another device?")
        return device

    async def _connect_once(self, device: Any, scan_timeout: float) -> _Connection:
        from bleak import BleakClient
        from bleak_retry_connector import establish_connection

        if device is None:
            device = await self._find_device(scan_timeout)
        self._generation += 1
        generation = self._generation
        client = await establish_connection(BleakClient, device, self.watch_id, max_attempts=2,
                                            disconnected_callback=lambda _c: self._link_gone(generation))
        name = getattr(device, "name", None) or self.address
        try:
            driver = self._driver_for(client, name)
            conn = _Connection(client, driver, name)
            if self.intake is None:
                self.intake = NotificationSource(self.watch_id, driver, self.options.intake_queue,
                                                 self.options.intake_max_age_s)
            else:
                self.intake.attach(driver)
            self.intake.begin_connection()
            try:
                await set_up(_BleakLink(client), self.intake, name, self.options.response_timeout_s, self.address)
            except SetupError as exc:
                raise (_Permanent if exc.permanent else _Transient)(str(exc)) from None
        except BaseException:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise
        self.connections += 1
        return conn

    def _link_gone(self, generation: int) -> None:
        # A late callback of an earlier connection must not end the current one's stream.
        if generation == self._generation and self.intake is not None:
            self._generation += 1  # bleak calls back again when we hang up ourselves: that is the same loss
            self.intake.connection_ended()

    def _driver_for(self, client: Any, name: str) -> WatchDriver:
        uuids = [normalize_uuid(s.uuid) for s in client.services]
        offered = ", ".join(uuids) or "no services"
        if self.protocol == "auto":
            try:
                cls = pick_driver(uuids)
            except UnknownDriverError:
                raise _Permanent(f"{self.address} ({name}) offers no service of a watch protocol this agent speaks "
                                 f"({', '.join(driver_names())}); it offers {offered}") from None
        else:
            cls = driver_by_name(self.protocol)
            if cls.match_score(uuids) == 0:
                raise _Permanent(f"{self.address} ({name}) lacks the {cls.name} service {cls.service_uuids[0]}; it "
                                 f"offers {offered}")
        if self.driver is not None and type(self.driver) is cls:
            self.driver.reset()  # the documented step after a reconnect
        else:
            self.driver = cls()
        return self.driver

    async def _disconnect(self, conn: _Connection) -> None:
        """Stop the stream and hang up, briefly: this runs when the agent stops."""
        try:
            async with asyncio.timeout(3):
                if conn.client.is_connected:
                    for write in conn.driver.stop_commands():
                        await conn.client.write_gatt_char(write.char_uuid, write.data,
                                                          response=conn.driver.write_with_response)
                await conn.client.disconnect()
        except (Exception, asyncio.CancelledError) as exc:
            log.debug("%s: disconnecting: %s", self.address, exc)


@dataclass(frozen=True)
class ScanResult:
    address: str
    name: str
    rssi: int
    protocol: str | None
    services: tuple[str, ...]


async def scan(timeout: float, options: BleOptions | None = None) -> list[ScanResult]:
    """Devices advertising within `timeout` seconds, strongest first, with the watch protocol recognised."""
    from bleak import BleakScanner

    options = options or BleOptions()
    try:
        async with _scan_lock():
            found = await BleakScanner.discover(timeout=timeout, return_adv=True, bluez=options.bluez())
    except Exception as exc:
        if (unavailable := _bluetooth_unavailable(exc)) is not None:
            raise unavailable from None
        raise BleError(f"scanning failed: {one_line(exc)}") from None
    results = [ScanResult(device.address.upper(), adv.local_name or device.name or "", adv.rssi,
                          recognise(adv.service_uuids, adv.local_name or device.name),
                          tuple(adv.service_uuids))
               for device, adv in found.values()]
    return sorted(results, key=lambda r: (-r.rssi, r.address))
