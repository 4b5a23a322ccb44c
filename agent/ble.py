"""Live watches over Bluetooth LE: bleak's BlueZ backend, bleak-retry-connector and a WatchDriver.

`BleSource` is a `Source` for the agent and for `record`. Its stream:

1. once, at start: closes connections BlueZ still holds to the watch from an earlier process that
   died without disconnecting (`close_stale_connections_by_address`);
2. finds the watch (known to BlueZ, else by scanning for up to `scan_timeout_s` per attempt),
   connects with `establish_connection`, picks the driver (`--protocol auto`: from the GATT
   services) and drives it as `firmware_bridge/driver.py` describes: notifications on, prepare
   commands (waiting for each answer where the watch sends one), start commands; reads and
   subscribes to the Battery Service where the watch has one;
3. yields `WatchConnected` (the sensors the watch really streams), then the decoded samples;
4. on link loss — or a stall: no notification for `stall_timeout_s` while BlueZ still calls it
   connected — yields `StreamGap` and reconnects.

Every attempt that fails (watch not found, Connect refused, BlueZ restarting, no adapter or one
powered off) is retried with backoff, `backoff_initial_s` doubling to `backoff_max_s`, for as long
as it takes; with a `retry_budget_s` only that long (a watch not found at start then stops at once,
the old behaviour). A connection that can never work — no matching service, a characteristic
missing — raises `BleError`, one line, and only this watch stops. `status` (l2mu.agent.watch_state)
follows it all for <prefix>/watch/<watch>/state.
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
from l2mu.agent.watch_state import WatchStatus
from l2mu.firmware_bridge.driver import (
    UnknownDriverError,
    WatchDriver,
    driver_by_name,
    driver_names,
    normalize_uuid,
    pick_driver,
)

log = logging.getLogger(__name__)

BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"  # Battery Service 0x180F, Battery Level 0x2A19

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


class _NotFound(_Transient):
    """No such device within one scan."""


@dataclass
class BleOptions:
    scan_timeout_s: float = DEFAULTS.scan_timeout  # how long to look for a watch BlueZ does not know yet
    # How long to look for a watch absent at start, or to reconnect after a link loss; None: forever.
    retry_budget_s: float | None = DEFAULTS.retry_budget
    backoff_initial_s: float = DEFAULTS.backoff_initial
    backoff_max_s: float = DEFAULTS.backoff_max
    stall_timeout_s: float = DEFAULTS.stall_timeout  # connected, but no notification this long: a lost link
    response_timeout_s: float = 5.0  # for a watch's answer to one command
    intake_queue: int = DEFAULTS.intake_queue
    intake_max_age_s: float = DEFAULTS.intake_max_age_s
    adapter: str | None = None  # hci0, …; None: BlueZ's default

    def __post_init__(self) -> None:
        for name in ("scan_timeout_s", "retry_budget_s", "backoff_initial_s", "backoff_max_s", "stall_timeout_s",
                     "response_timeout_s"):
            if getattr(self, name) is None and name == "retry_budget_s":
                continue
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
        what = exc.args[0] if exc.args and isinstance(exc.args[0], str) else one_line(exc)
        return _Permanent(f"Bluetooth is not available: {what} (l2mu-agent doctor checks the set-up)")
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
        self.connecting = False  # looking for the watch or (re)connecting: silent, not stalled
        self._generation = 0  # which connection a disconnect callback belongs to
        self.status = WatchStatus(self.watch_id)
        self.status.readings = self._readings
        self._device_props: dict | None = None  # bleak's live copy of the device's BlueZ properties (RSSI)
        self._rssi_seen: int | None = None  # of the advertisement that found it
        self._gaps_before = 0  # packets the sequence numbers showed lost on earlier connections (drivers restart them)
        self._stalled = False
        self._streaming = False  # connected at least once: later attempts are reconnections

    @property
    def feed(self) -> NotificationFeed | None:
        return self.intake.feed if self.intake is not None else None

    def _readings(self) -> dict[str, Any]:
        rssi = self._device_props.get("RSSI") if self._device_props is not None else None
        if rssi is None:
            rssi = self._rssi_seen
        dropped = self._gaps_before
        if self.intake is not None:
            dropped += self.intake.decode_errors + int(getattr(self.intake.driver, "gaps", 0))
        return {"rssi": int(rssi) if isinstance(rssi, int) else None, "dropped_frames": dropped}

    # --- the stream --------------------------------------------------------------------------

    async def stream(self) -> AsyncIterator[SourceEvent]:
        await self._close_stale()
        conn: _Connection | None = None
        try:
            self.connecting = True
            conn = await self._keep_trying("first connection")
            self.connecting = False
            while True:
                self.sensors, self.sensors_known = set(conn.driver.sensors), True
                self._streaming = True
                self.status.set("streaming")
                yield WatchConnected(tuple(conn.driver.sensors), conn.driver.name, conn.name)
                assert self.intake is not None
                self._stalled = False
                stall = asyncio.create_task(self._stall_watch(self._generation))
                try:
                    async for item in self.intake.connection():  # until the link is gone
                        yield item
                finally:
                    stall.cancel()
                why = "stalled" if self._stalled else "link lost"
                budget = self.options.retry_budget_s
                log.warning("%s: %s; reconnecting %s", self.address, why,
                            f"for up to {budget:g} s" if budget is not None else "until it is back")
                lost, conn = conn, None
                self.connecting = True
                self.status.set("reconnecting", why)
                self._gaps_before += int(getattr(lost.driver, "gaps", 0))
                await self._disconnect(lost)  # releases bleak's per-connection D-Bus connection
                for sensor in lost.driver.sensors:
                    yield StreamGap(sensor, why)
                conn = await self._keep_trying(why)
                self.connecting = False
        except BleError as exc:
            self.status.set("stopped", str(exc))
            raise
        finally:
            self.connecting = False
            if conn is not None:
                await self._disconnect(conn)

    async def _stall_watch(self, generation: int) -> None:
        """Ends the connection when BlueZ says connected but no notification came for `stall_timeout_s`."""
        assert self.intake is not None
        limit = self.options.stall_timeout_s
        seen, at = -1, time.monotonic()
        while generation == self._generation:
            count = self.intake.feed.notifications
            now = time.monotonic()
            if count != seen:
                seen, at = count, now
            elif now - at >= limit:
                log.warning("%s: no notification for %g s while connected; treating it as a lost link",
                            self.address, limit)
                self._stalled = True
                self._link_gone(generation)
                return
            await asyncio.sleep(min(limit / 4, 0.5))

    async def _keep_trying(self, why: str) -> _Connection:
        """Find and connect the watch, with backoff, until it works (or the retry budget is spent)."""
        budget = self.options.retry_budget_s
        deadline = None if budget is None else time.monotonic() + budget
        first = why == "first connection"
        delay = self.options.backoff_initial_s
        attempt = 0
        last = "no attempt finished"
        device = None
        if first and budget is not None:  # the old, fail-fast start: a watch not seen at once is an error
            try:
                device = await self._find_device(self.options.scan_timeout_s)
            except _NotFound as exc:
                raise _Permanent(str(exc)) from None
            except Exception as exc:
                if (unavailable := _bluetooth_unavailable(exc)) is not None:
                    raise unavailable from None
                raise
            deadline = time.monotonic() + budget
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if first:
                    raise BleError(f"{self.address}: found, but no connection worked within {budget:g} s "
                                   f"({attempt} attempt(s)); last error: {last}")
                raise BleError(f"{self.address}: gave up after {budget:g} s of reconnecting "
                               f"({why}; {attempt} attempt(s)); last error: {last}")
            attempt += 1
            scan_timeout = self.options.scan_timeout_s if remaining is None else min(self.options.scan_timeout_s,
                                                                                      remaining)
            try:
                async with asyncio.timeout(remaining):
                    conn = await self._connect_once(scan_timeout, device)
                if attempt > 1 or not first:
                    log.info("%s: connected%s (attempt %d)", self.address, "" if first else " again", attempt)
                return conn
            except _Permanent:
                raise
            except _Transient as exc:
                last = str(exc)
            except TimeoutError:
                last = "timed out"
            except Exception as exc:  # bleak and dbus-fast raise many kinds; each attempt's reason is logged
                unavailable = _bluetooth_unavailable(exc)
                if unavailable is not None and budget is not None:
                    raise unavailable from None
                # No adapter, BlueZ restarting, the system bus away: all can come back, so keep looking.
                last = str(unavailable) if unavailable is not None else one_line(exc)
            device = None  # look it up again: BlueZ may have dropped and re-created it
            wait = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            log.warning("%s: connection attempt %d failed: %s; next in %.1f s", self.address, attempt, last, wait)
            if self._streaming:
                self.status.set("reconnecting", f"{why}: {last}")
            else:
                self.status.set("searching", last)
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
                if device is None:  # errors (no adapter, BlueZ away) are _keep_trying's to judge
                    def ours(found: Any, adv: Any) -> bool:
                        if found.address.upper() != self.address:
                            return False
                        self._rssi_seen = adv.rssi  # the advertisement's; BlueZ drops RSSI once discovery stops
                        return True

                    device = await BleakScanner.find_device_by_filter(ours, timeout=timeout,
                                                                      bluez=self.options.bluez())
        if device is None:
            raise _NotFound(f"{self.address}: no such watch found within {timeout:g} s of scanning; is it on, "
                             f"in range and not connected to another device?")
        return device

    async def _connect_once(self, scan_timeout: float, device: Any = None) -> _Connection:
        from bleak import BleakClient
        from bleak_retry_connector import establish_connection

        if not self._streaming:
            self.status.set("searching", self.status.reason)
        if device is None:
            device = await self._find_device(scan_timeout)
        details = getattr(device, "details", None)
        self._device_props = details.get("props") if isinstance(details, dict) else None
        if not self._streaming:
            self.status.set("connecting")
        # The connection's generation is only known once it is up: bleak also calls back for a link that dropped
        # while it was still connecting (BlueZ's le-connection-abort-by-local, which bleak retries itself), and
        # that must neither end nor outdate the connection it then makes.
        ours: list[int] = []
        # No service cache: bleak keeps a device's services across connections and bleak-retry-connector checks
        # them against objects BlueZ may not have finished removing after a link loss, so a reconnection would
        # drive characteristics that are gone. Resolving them anew reads bleak's own copy of BlueZ's objects.
        client = await establish_connection(BleakClient, device, self.watch_id, max_attempts=2,
                                            use_services_cache=False,
                                            disconnected_callback=lambda _c: ours and self._link_gone(ours[0]))
        self._generation += 1
        ours.append(self._generation)
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
            await self._battery(client)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.disconnect()
            raise
        self.connections += 1
        return conn

    async def _battery(self, client: Any) -> None:
        """The Battery Level, read now and followed by notification, where the watch has the Battery Service."""
        char = client.services.get_characteristic(BATTERY_LEVEL)
        if char is None:
            return
        try:
            value = await client.read_gatt_char(char)
            if value:
                self.status.set_battery(value[0])
            if "notify" in char.properties:
                await client.start_notify(char, lambda _c, data: data and self.status.set_battery(data[0]))
        except Exception as exc:  # the battery is a nicety: a watch that refuses it still streams
            log.debug("%s: battery level not available: %s", self.address, one_line(exc))

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
