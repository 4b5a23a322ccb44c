"""A BlueZ-compatible D-Bus service: `org.bluez` with one adapter and virtual peripherals.

It speaks the part of BlueZ's D-Bus API (doc/org.bluez.Adapter.rst, Device.rst, GattService.rst,
GattCharacteristic.rst, GattDescriptor.rst of BlueZ 5.6x+) a central such as bleak uses, with
BlueZ's object layout and signals, so an unmodified client cannot tell it from bluetoothd:

- `/` implements org.freedesktop.DBus.ObjectManager; InterfacesAdded/InterfacesRemoved are
  emitted for every object that appears or goes, with all its interfaces at once.
- `/org/bluez/hci0` is an Adapter1 (Powered, Discovering, Roles, …; StartDiscovery,
  StopDiscovery, SetDiscoveryFilter, RemoveDevice). Discovery sessions belong to the client that
  started them and end when it leaves the bus.
- Peripherals in range advertise while some client discovers: their Device1 object appears
  (`dev_AA_BB_CC_DD_EE_FF`) and its RSSI changes with every advertisement; RSSI is invalidated when
  discovery stops. A device neither connected nor seen for `temporary_timeout_s` is removed, as
  BlueZ does with temporary devices.
- Device1.Connect connects (Connected, then the GATT objects, then ServicesResolved) or, for a
  device out of range, fails after `connect_timeout_s` with `le-connection-timeout`;
  Disconnect and a link loss undo it in BlueZ's order and remove the GATT objects of the
  (unbonded) device.
- GattService1/GattCharacteristic1/GattDescriptor1 objects (`serviceXXXX/charYYYY/descZZZZ`,
  with a CCCD for every notifying characteristic) support ReadValue, WriteValue (request or
  command, checked against Flags), StartNotify/StopNotify (notify sessions per client; values
  arrive as PropertiesChanged on Value) and AcquireNotify (a SOCK_SEQPACKET socket per client,
  NotifyAcquired set).

Faults, for tests: `stop_bluez`/`start_bluez` (bluetoothd restarting: every connection and object
dropped, `org.bluez` released, later owned again and the adapter announced), `set_powered`,
`remove_adapter`/`add_adapter` (InterfacesRemoved/Added), `fail_connect` (the next Connects fail with
a given error; `le-connection-abort-by-local` shows Connected going true and false first, as BlueZ
does), `stall_notifications` (the link stays up, notifications stop until it disconnects) and
`gatt_removal_delay_s` (a disconnection's GATT objects go that long after Connected turns false).

A `Peripheral` is the firmware side: it declares services and answers writes, reads and
subscriptions, and sends notifications through the `Link` it gets while connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

log = logging.getLogger(__name__)

BLUEZ = "org.bluez"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
SERVICE = "org.bluez.GattService1"
CHARACTERISTIC = "org.bluez.GattCharacteristic1"
DESCRIPTOR = "org.bluez.GattDescriptor1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
CCCD_UUID = "00002902-0000-1000-8000-00805f9b34fb"
NOTIFYING_FLAGS = ("notify", "indicate")
DEFAULT_MTU = 247


class BluezError(Exception):
    """A D-Bus error reply, named as BlueZ names them (org.bluez.Error.*)."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name
        self.text = text


def not_connected() -> BluezError:
    return BluezError("org.bluez.Error.NotConnected", "Not Connected")


@dataclass
class GattCharacteristic:
    uuid: str
    flags: tuple[str, ...]
    value: bytes = b""


@dataclass
class GattService:
    uuid: str
    characteristics: list[GattCharacteristic]
    primary: bool = True


class Link:
    """A peripheral's side of one connection: notifications go out only while it is open."""

    def __init__(self, adapter: VirtualAdapter, device: _Device) -> None:
        self._adapter = adapter
        self._device = device
        self.is_open = True

    def notify(self, char_uuid: str, data: bytes) -> bool:
        """Send a notification (or indication); True if some client had subscribed to it."""
        if not self.is_open:
            return False
        return self._adapter._notify(self._device, char_uuid.lower(), bytes(data))

    def disconnect(self) -> None:
        """The peripheral ends the connection (like a watch that drops the link)."""
        if self.is_open:
            self._adapter._teardown(self._device, "remote")


class Peripheral:
    """The firmware side of a virtual device; subclasses override what they support."""

    address: str = "C0:00:00:00:00:01"
    name: str = "virtual"
    address_type: str = "random"
    rssi: int = -55

    def advertised_uuids(self) -> list[str]:
        return []

    def services(self) -> list[GattService]:
        return []

    def on_connect(self, link: Link) -> None:
        pass

    def on_disconnect(self) -> None:
        pass

    def on_write(self, char_uuid: str, data: bytes, with_response: bool) -> None:
        """Raise BluezError to refuse; notifications sent from here go out after the write's reply."""

    def on_read(self, char_uuid: str) -> bytes | None:
        """The value to answer a read with; None: the characteristic's stored value."""
        return None

    def on_notify_enabled(self, char_uuid: str, enabled: bool) -> None:
        """The CCCD was written: the first client subscribed, or the last one left."""


@dataclass
class _Char:
    path: str
    spec: GattCharacteristic
    service_path: str
    cccd_path: str | None
    sessions: set[str] = field(default_factory=set)  # unique bus names that called StartNotify
    sockets: dict[str, socket.socket] = field(default_factory=dict)  # AcquireNotify, by client


@dataclass
class _Device:
    peripheral: Peripheral
    path: str
    in_range: bool = True
    exported: bool = False
    connected: bool = False
    connecting: asyncio.Task | None = None
    link: Link | None = None
    chars: dict[str, _Char] = field(default_factory=dict)  # by path
    gatt_paths: list[str] = field(default_factory=list)  # creation order
    last_seen: float = 0.0
    connect_failures: list[tuple[str, str]] = field(default_factory=list)  # (error, text) for the next Connects
    stalled: bool = False  # connected, but its notifications no longer reach anyone (until it disconnects)
    removing: asyncio.Task | None = None  # the last connection's GATT objects, going (gatt_removal_delay_s)


def _v(signature: str, value: Any) -> Variant:
    return Variant(signature, value)


def device_path(adapter_path: str, address: str) -> str:
    return f"{adapter_path}/dev_{address.upper().replace(':', '_')}"


class VirtualAdapter:
    """org.bluez on `bus` with one adapter; call `start()` on the bus's event loop."""

    def __init__(self, bus: MessageBus, name: str = "hci0", address: str = "00:00:5E:00:53:01",
                 temporary_timeout_s: float = 30.0, connect_timeout_s: float = 2.0,
                 advertising_interval_s: float = 0.25, connect_latency_s: float = 0.03,
                 gatt_removal_delay_s: float = 0.0) -> None:
        self.bus = bus
        self.path = f"/org/bluez/{name}"
        self.address = address
        self.temporary_timeout_s = temporary_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.advertising_interval_s = advertising_interval_s
        self.connect_latency_s = connect_latency_s
        # A client reads a disconnection's signals one by one and acts on Connected=false before it has seen
        # the GATT objects go; a delay here makes that ordinary race certain.
        self.gatt_removal_delay_s = gatt_removal_delay_s
        # Calls that change a device's state, in order, for diagnostics: (member, address, caller).
        self.events: list[tuple[str, str, str]] = []
        self._objects: dict[str, dict[str, dict[str, Variant]]] = {}
        self._devices: dict[str, _Device] = {}  # by address
        self._discovery: set[str] = set()  # clients with a discovery session
        self._filters: dict[str, dict[str, Variant]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._held: list[tuple[_Device, str, bytes]] | None = None  # notifications held until a reply is out
        self._rng = random.Random(0)
        self.bluez_running = True  # False between stop_bluez and start_bluez
        self._handle = 0x0010

    # --- set-up and control ------------------------------------------------------------------

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
            member="AddMatch", signature="s",
            body=["type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                  "member='NameOwnerChanged'"]))
        _check(reply)
        self._add_adapter_object()
        reply = await self.bus.request_name(BLUEZ)
        log.debug("requested %s: %s", BLUEZ, reply)
        self._spawn(self._advertise_loop())
        self._spawn(self._expiry_loop())

    def _add_adapter_object(self) -> None:
        self._add_object(self.path, {ADAPTER: {
            "Address": _v("s", self.address), "AddressType": _v("s", "public"), "Name": _v("s", "l2mu-virtual"),
            "Alias": _v("s", "l2mu-virtual"), "Class": _v("u", 0), "Powered": _v("b", True),
            "PowerState": _v("s", "on"), "Discoverable": _v("b", False), "DiscoverableTimeout": _v("u", 180),
            "Pairable": _v("b", False), "PairableTimeout": _v("u", 0), "Discovering": _v("b", False),
            "UUIDs": _v("as", []), "Modalias": _v("s", "usb:v1D6Bp0246d0542"),
            "Roles": _v("as", ["central", "peripheral"]),
        }})

    # --- faults, as tests inject them ------------------------------------------------------

    def remove_adapter(self) -> None:
        """The adapter goes (USB dongle pulled, hci reset): connections drop, its devices and then the adapter
        object itself are removed (InterfacesRemoved), discovery sessions end."""
        for dev in self._devices.values():
            if dev.exported:
                self._unexport_device(dev)
        self._discovery.clear()
        self._filters.clear()
        self._discovery_changed()
        self._remove_object(self.path)

    def add_adapter(self) -> None:
        """The adapter is back (InterfacesAdded), powered, knowing no device yet."""
        if self.path not in self._objects:
            self._add_adapter_object()

    async def stop_bluez(self) -> None:
        """bluetoothd stops (systemctl restart bluetooth): it drops every connection and object, then leaves
        the bus, so `org.bluez` has no owner until `start_bluez`."""
        self.remove_adapter()
        self.bluez_running = False
        await self.bus.release_name(BLUEZ)

    async def start_bluez(self) -> None:
        """bluetoothd is back: it owns `org.bluez` again and announces its adapter."""
        reply = await self.bus.request_name(BLUEZ)
        log.debug("requested %s again: %s", BLUEZ, reply)
        self.bluez_running = True
        self.add_adapter()

    def set_powered(self, powered: bool) -> None:
        """Adapter1.Powered, as `bluetoothctl power off|on` (or rfkill) sets it."""
        self._set_powered(powered)

    def fail_connect(self, address: str, error: str, text: str, times: int = 1) -> None:
        """The next `times` Device1.Connect calls to this device fail with this D-Bus error, e.g.
        org.bluez.Error.Failed `le-connection-abort-by-local`, or org.bluez.Error.InProgress."""
        self._device(address).connect_failures.extend([(error, text)] * times)

    def stall_notifications(self, address: str) -> None:
        """The link stays up, but the device's notifications stop reaching the clients (a controller or
        firmware that went quiet); disconnecting ends it."""
        self._device(address).stalled = True

    async def close(self) -> None:
        """Stops advertising, expiry and every connection's streaming; the bus stays the caller's."""
        for dev in self._devices.values():
            self._teardown(dev, "adapter closed")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def add(self, peripheral: Peripheral, *, in_range: bool = True, stale_connection: bool = False) -> None:
        """A peripheral near the adapter. stale_connection: BlueZ still holds a connection to it that
        no client owns (a previous program died without disconnecting)."""
        dev = _Device(peripheral, device_path(self.path, peripheral.address), in_range=in_range,
                      last_seen=time.monotonic())
        self._devices[peripheral.address.upper()] = dev
        if stale_connection:
            self._export_device(dev, with_rssi=False)
            self._establish(dev)

    def set_in_range(self, address: str, in_range: bool) -> None:
        """Moves a device into or out of radio range; leaving range drops its connection."""
        dev = self._device(address)
        dev.in_range = in_range
        if not in_range and dev.connected:
            self._teardown(dev, "link loss")

    def drop_link(self, address: str) -> None:
        """The radio link fails (supervision timeout); the device stays in range."""
        dev = self._device(address)
        if dev.connected:
            self._teardown(dev, "link loss")

    def is_connected(self, address: str) -> bool:
        return self._device(address).connected

    def _device(self, address: str) -> _Device:
        try:
            return self._devices[address.upper()]
        except KeyError:
            raise KeyError(f"no virtual device {address}") from None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- objects and signals -----------------------------------------------------------------

    def _add_object(self, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        self._objects[path] = interfaces
        self._send(Message.new_signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, interfaces]))

    def _remove_object(self, path: str) -> None:
        interfaces = self._objects.pop(path, None)
        if interfaces is not None:
            self._send(Message.new_signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(interfaces)]))

    def _set(self, path: str, interface: str, changes: dict[str, Variant]) -> None:
        props = self._objects.get(path, {}).get(interface)
        if props is None:
            return
        changed = {k: v for k, v in changes.items() if props.get(k) != v}
        if changed:
            props.update(changed)
            self._send(Message.new_signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                          [interface, changed, []]))

    def _invalidate(self, path: str, interface: str, names: list[str]) -> None:
        props = self._objects.get(path, {}).get(interface)
        gone = [n for n in names if props is not None and props.pop(n, None) is not None]
        if gone:
            self._send(Message.new_signal(path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, {}, gone]))

    def _send(self, msg: Message) -> None:
        if self.bus.connected:
            self.bus.send(msg)

    # --- discovery ---------------------------------------------------------------------------

    def _advertisement(self, dev: _Device) -> None:
        """One advertisement received from an in-range device while discovering."""
        dev.last_seen = time.monotonic()
        base = dev.peripheral.rssi
        rssi = base + self._rng.choice((-2, -1, 1, 2))  # every advertisement is a fresh reading
        if not dev.exported:
            self._export_device(dev, with_rssi=True, rssi=rssi)
        else:
            self._set(dev.path, DEVICE, {"RSSI": _v("n", rssi)})

    def _export_device(self, dev: _Device, with_rssi: bool, rssi: int = 0) -> None:
        p = dev.peripheral
        props = {
            "Address": _v("s", p.address.upper()), "AddressType": _v("s", p.address_type), "Name": _v("s", p.name),
            "Alias": _v("s", p.name), "Paired": _v("b", False), "Bonded": _v("b", False), "Trusted": _v("b", False),
            "Blocked": _v("b", False), "LegacyPairing": _v("b", False), "Connected": _v("b", False),
            "UUIDs": _v("as", [u.lower() for u in p.advertised_uuids()]), "Adapter": _v("o", self.path),
            "ServicesResolved": _v("b", False),
        }
        if with_rssi:
            props["RSSI"] = _v("n", rssi)
        dev.exported = True
        self._add_object(dev.path, {DEVICE: props})

    def _unexport_device(self, dev: _Device) -> None:
        if dev.connected:
            self._teardown(dev, "removed")
        dev.exported = False
        self._remove_object(dev.path)

    async def _advertise_loop(self) -> None:
        while True:
            if self._discovery and self._powered():
                for dev in list(self._devices.values()):
                    if dev.in_range and not dev.connected:  # a connected watch stops advertising
                        self._advertisement(dev)
            await asyncio.sleep(self.advertising_interval_s)

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.temporary_timeout_s / 4))
            now = time.monotonic()
            for dev in list(self._devices.values()):
                if dev.exported and not dev.connected and dev.connecting is None \
                        and now - dev.last_seen > self.temporary_timeout_s:
                    self._unexport_device(dev)

    def _powered(self) -> bool:
        adapter = self._objects.get(self.path)  # None while the adapter is removed
        return adapter is not None and bool(adapter[ADAPTER]["Powered"].value)

    def _set_powered(self, powered: bool) -> None:
        if self.path not in self._objects:
            raise KeyError("no adapter to power")
        self._set(self.path, ADAPTER, {"Powered": _v("b", powered), "PowerState": _v("s", "on" if powered else "off")})
        if not powered:
            for dev in self._devices.values():
                self._teardown(dev, "adapter powered off")
            self._discovery.clear()
            self._discovery_changed()

    def _discovery_changed(self) -> None:
        if self.path not in self._objects:
            return  # no adapter: nothing discovers
        discovering = bool(self._discovery)
        was = self._objects[self.path][ADAPTER]["Discovering"].value
        self._set(self.path, ADAPTER, {"Discovering": _v("b", discovering)})
        if was and not discovering:
            for dev in self._devices.values():
                if dev.exported:
                    self._invalidate(dev.path, DEVICE, ["RSSI", "TxPower"])
        elif discovering and not was:
            for dev in self._devices.values():  # the first advertisements arrive at once
                if dev.in_range and not dev.connected:
                    self._advertisement(dev)

    # --- connections -------------------------------------------------------------------------

    def _establish(self, dev: _Device) -> None:
        dev.connected = True
        dev.link = Link(self, dev)
        self._set(dev.path, DEVICE, {"Connected": _v("b", True)})
        dev.peripheral.on_connect(dev.link)
        uuids = list(self._objects[dev.path][DEVICE]["UUIDs"].value)
        for service in dev.peripheral.services():
            self._export_service(dev, service)
            if service.uuid.lower() not in uuids:
                uuids.append(service.uuid.lower())
        self._set(dev.path, DEVICE, {"UUIDs": _v("as", uuids), "ServicesResolved": _v("b", True)})

    def _next_handle(self) -> int:
        self._handle = (self._handle + 1) & 0xFFFF or 0x0010
        return self._handle

    def _export_service(self, dev: _Device, service: GattService) -> None:
        handle = self._next_handle()
        spath = f"{dev.path}/service{handle:04x}"
        dev.gatt_paths.append(spath)
        self._add_object(spath, {SERVICE: {
            "UUID": _v("s", service.uuid.lower()), "Device": _v("o", dev.path), "Primary": _v("b", service.primary),
            "Includes": _v("ao", []), "Handle": _v("q", handle)}})
        for spec in service.characteristics:
            chandle = self._next_handle()
            cpath = f"{spath}/char{chandle:04x}"
            props = {"UUID": _v("s", spec.uuid.lower()), "Service": _v("o", spath), "Value": _v("ay", spec.value),
                     "Flags": _v("as", list(spec.flags)), "MTU": _v("q", DEFAULT_MTU), "Handle": _v("q", chandle)}
            notifies = any(f in spec.flags for f in NOTIFYING_FLAGS)
            if notifies:
                props["Notifying"] = _v("b", False)
                props["NotifyAcquired"] = _v("b", False)
            dev.gatt_paths.append(cpath)
            self._add_object(cpath, {CHARACTERISTIC: props})
            cccd = None
            if notifies:
                dhandle = self._next_handle()
                cccd = f"{cpath}/desc{dhandle:04x}"
                dev.gatt_paths.append(cccd)
                self._add_object(cccd, {DESCRIPTOR: {
                    "UUID": _v("s", CCCD_UUID), "Characteristic": _v("o", cpath), "Value": _v("ay", b""),
                    "Flags": _v("as", ["read", "write"]), "Handle": _v("q", dhandle)}})
            dev.chars[cpath] = _Char(cpath, spec, spath, cccd)

    def _teardown(self, dev: _Device, reason: str) -> None:
        """BlueZ's order on a disconnection: ServicesResolved off, Connected off, GATT objects gone."""
        if not dev.connected:
            return
        self.events.append(("Disconnected", dev.peripheral.address.upper(), reason))
        dev.connected = False
        dev.stalled = False
        if dev.link is not None:
            dev.link.is_open = False
            dev.link = None
        for char in dev.chars.values():
            for sock in char.sockets.values():
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(sock.fileno())
                sock.close()
            char.sockets.clear()
            char.sessions.clear()
        dev.peripheral.on_disconnect()
        self._set(dev.path, DEVICE, {"ServicesResolved": _v("b", False)})
        self._set(dev.path, DEVICE, {"Connected": _v("b", False)})
        going = list(reversed(dev.gatt_paths))
        dev.gatt_paths.clear()
        dev.chars.clear()
        dev.last_seen = time.monotonic()
        if self.gatt_removal_delay_s > 0:
            dev.removing = self._spawn(self._remove_later(going))
        else:
            for path in going:
                self._remove_object(path)

    async def _remove_later(self, paths: list[str]) -> None:
        await asyncio.sleep(self.gatt_removal_delay_s)
        for path in paths:
            self._remove_object(path)

    async def _connect(self, msg: Message, dev: _Device, abort: tuple[str, str] | None = None) -> None:
        """Answers Connect once the link is up or has failed. `abort` (error, text) plays BlueZ's
        `le-connection-abort-by-local`: the link comes up and the controller drops it at once, so clients see
        Connected go true and false again before the error. A Disconnect meanwhile cancels either with the
        reply BlueZ gives, so the caller is always answered."""
        try:
            if abort is not None:
                await asyncio.sleep(self.connect_latency_s)
                self._set(dev.path, DEVICE, {"Connected": _v("b", True)})
                self._set(dev.path, DEVICE, {"Connected": _v("b", False)})
                self.events.append(("Disconnected", dev.peripheral.address.upper(), abort[1]))
                reply = Message.new_error(msg, *abort)
            elif not dev.in_range:
                await asyncio.sleep(self.connect_timeout_s)
                reply = Message.new_error(msg, "org.bluez.Error.Failed", "le-connection-timeout")
            else:
                await asyncio.sleep(self.connect_latency_s)
                if dev.removing is not None:  # BlueZ exports a connection's objects once the last one's are gone
                    await dev.removing
                    dev.removing = None
                self._establish(dev)
                reply = Message.new_method_return(msg)
        except asyncio.CancelledError:
            reply = Message.new_error(msg, "org.bluez.Error.Failed", "Cancelled")
        finally:
            dev.connecting = None
        self._send(reply)

    # --- notifications -----------------------------------------------------------------------

    def _notify(self, dev: _Device, char_uuid: str, data: bytes) -> bool:
        char = next((c for c in dev.chars.values() if c.spec.uuid.lower() == char_uuid), None)
        if char is None or not any(f in char.spec.flags for f in NOTIFYING_FLAGS):
            raise ValueError(f"{dev.peripheral.name}: {char_uuid} is not a characteristic that notifies")
        if dev.stalled:
            return False
        if self._held is not None:
            self._held.append((dev, char_uuid, data))
            return bool(char.sessions or char.sockets)
        delivered = False
        if char.sessions:
            char.spec.value = data
            props = self._objects[char.path][CHARACTERISTIC]
            props["Value"] = _v("ay", data)
            # Every notification is a PropertiesChanged, even when the bytes repeat, as BlueZ sends them.
            self._send(Message.new_signal(char.path, PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                          [CHARACTERISTIC, {"Value": _v("ay", data)}, []]))
            delivered = True
        for client, sock in list(char.sockets.items()):
            try:
                sock.send(data)
                delivered = True
            except BlockingIOError:
                pass  # the client is not reading: the notification is lost, as over the air
            except OSError:
                self._release_socket(dev, char, client)
        return delivered

    def _flush_held(self) -> None:
        held, self._held = self._held or [], None
        for dev, uuid, data in held:
            if dev.connected:
                self._notify(dev, uuid, data)

    def _subscriptions_changed(self, dev: _Device, char: _Char, was_on: bool) -> None:
        on = bool(char.sessions or char.sockets)
        self._set(char.path, CHARACTERISTIC, {"Notifying": _v("b", bool(char.sessions)),
                                              "NotifyAcquired": _v("b", bool(char.sockets))})
        if on != was_on:
            if char.cccd_path:
                self._set(char.cccd_path, DESCRIPTOR, {"Value": _v("ay", b"\x01\x00" if on else b"\x00\x00")})
            dev.peripheral.on_notify_enabled(char.spec.uuid.lower(), on)

    def _release_socket(self, dev: _Device, char: _Char, client: str) -> None:
        sock = char.sockets.pop(client, None)
        if sock is None:
            return
        was_on = True
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        self._subscriptions_changed(dev, char, was_on)

    def _client_left(self, name: str) -> None:
        if name in self._discovery:
            self._discovery.discard(name)
            self._filters.pop(name, None)
            self._discovery_changed()
        for dev in self._devices.values():
            for char in list(dev.chars.values()):
                if name in char.sessions or name in char.sockets:
                    was_on = bool(char.sessions or char.sockets)
                    char.sessions.discard(name)
                    sock = char.sockets.pop(name, None)
                    if sock is not None:
                        with contextlib.suppress(Exception):
                            asyncio.get_running_loop().remove_reader(sock.fileno())
                        sock.close()
                    self._subscriptions_changed(dev, char, was_on)

    # --- D-Bus dispatch ----------------------------------------------------------------------

    def _on_message(self, msg: Message) -> Message | bool | None:
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
                name, _old, new = msg.body
                if not new and name.startswith(":"):
                    self._client_left(name)
            return None
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        if msg.destination not in (BLUEZ, self.bus.unique_name) or not self.bluez_running:
            return None
        try:
            return self._dispatch(msg)
        except BluezError as exc:
            return Message.new_error(msg, exc.name, exc.text)

    def _dispatch(self, msg: Message) -> Message | bool:
        path, iface, member = msg.path or "", msg.interface, msg.member
        if iface == INTROSPECTABLE and member == "Introspect":
            return Message.new_method_return(msg, "s", [self._introspect(path)])
        if iface == OBJECT_MANAGER and member == "GetManagedObjects" and path == "/":
            return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._objects])
        if iface == PROPERTIES:
            return self._properties(msg)
        if path not in self._objects:
            raise BluezError("org.freedesktop.DBus.Error.UnknownObject", f"Method \"{member}\" with signature "
                             f"\"{msg.signature}\" on interface \"{iface}\" doesn't exist")
        if path == self.path and iface in (ADAPTER, None):
            return self._adapter_call(msg)
        dev = next((d for d in self._devices.values() if d.exported and d.path == path), None)
        if dev is not None and iface in (DEVICE, None):
            return self._device_call(msg, dev)
        for dev in self._devices.values():
            if path in dev.chars and iface in (CHARACTERISTIC, None):
                return self._char_call(msg, dev, dev.chars[path])
            char = next((c for c in dev.chars.values() if c.cccd_path == path), None)
            if char is not None and iface in (DESCRIPTOR, None):
                return self._descriptor_call(msg, char)
        raise BluezError("org.freedesktop.DBus.Error.UnknownMethod", f"Method \"{member}\" with signature "
                         f"\"{msg.signature}\" on interface \"{iface}\" doesn't exist")

    def _properties(self, msg: Message) -> Message:
        path = msg.path or ""
        if path not in self._objects:
            raise BluezError("org.freedesktop.DBus.Error.UnknownObject", f"no object {path}")
        if msg.member == "GetAll" and msg.signature == "s":
            return Message.new_method_return(msg, "a{sv}", [self._objects[path].get(msg.body[0], {})])
        if msg.member == "Get" and msg.signature == "ss":
            iface, name = msg.body
            try:
                return Message.new_method_return(msg, "v", [self._objects[path][iface][name]])
            except KeyError:
                raise BluezError("org.freedesktop.DBus.Error.InvalidArgs", "No such property") from None
        if msg.member == "Set" and msg.signature == "ssv":
            iface, name, value = msg.body
            writable = {ADAPTER: {"Powered", "Alias", "Discoverable", "Pairable", "DiscoverableTimeout",
                                  "PairableTimeout"},
                        DEVICE: {"Alias", "Trusted", "Blocked"}}
            if name not in writable.get(iface, set()) or name not in self._objects[path].get(iface, {}):
                raise BluezError("org.freedesktop.DBus.Error.InvalidArgs", "No such property or read-only")
            if value.signature != self._objects[path][iface][name].signature:
                raise BluezError("org.bluez.Error.InvalidArguments", "Invalid arguments in method call")
            if iface == ADAPTER and name == "Powered":
                self._set_powered(bool(value.value))
            else:
                self._set(path, iface, {name: value})
            return Message.new_method_return(msg)
        raise BluezError("org.freedesktop.DBus.Error.UnknownMethod", f"Properties.{msg.member}")

    def _adapter_call(self, msg: Message) -> Message:
        member, sender = msg.member, msg.sender or ""
        if member == "StartDiscovery":
            if not self._powered():
                raise BluezError("org.bluez.Error.NotReady", "Resource Not Ready")
            if sender in self._discovery:
                raise BluezError("org.bluez.Error.InProgress", "Operation already in progress")
            self._discovery.add(sender)
            self.events.append(("StartDiscovery", "", sender))
            self._discovery_changed()
            return Message.new_method_return(msg)
        if member == "StopDiscovery":
            if not self._powered():
                raise BluezError("org.bluez.Error.NotReady", "Resource Not Ready")
            if sender not in self._discovery:
                raise BluezError("org.bluez.Error.Failed", "No discovery started")
            self._discovery.discard(sender)
            self.events.append(("StopDiscovery", "", sender))
            self._discovery_changed()
            return Message.new_method_return(msg)
        if member == "SetDiscoveryFilter" and msg.signature == "a{sv}":
            known = {"UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"}
            if not set(msg.body[0]) <= known:
                raise BluezError("org.bluez.Error.InvalidArguments", "Invalid arguments in method call")
            self._filters[sender] = msg.body[0]
            return Message.new_method_return(msg)
        if member == "GetDiscoveryFilters":
            return Message.new_method_return(msg, "as", [["UUIDs", "RSSI", "Pathloss", "Transport",
                                                           "DuplicateData", "Discoverable", "Pattern"]])
        if member == "RemoveDevice" and msg.signature == "o":
            dev = next((d for d in self._devices.values() if d.exported and d.path == msg.body[0]), None)
            if dev is None:
                raise BluezError("org.bluez.Error.DoesNotExist", "Does Not Exist")
            self.events.append(("RemoveDevice", dev.peripheral.address.upper(), sender))
            self._unexport_device(dev)
            return Message.new_method_return(msg)
        raise BluezError("org.freedesktop.DBus.Error.UnknownMethod", f"Adapter1.{member} is not supported")

    def _device_call(self, msg: Message, dev: _Device) -> Message | bool:
        member, sender = msg.member, msg.sender or ""
        address = dev.peripheral.address.upper()
        if member == "Connect":
            self.events.append(("Connect", address, sender))
            if not self._powered():
                raise BluezError("org.bluez.Error.NotReady", "Resource Not Ready")
            if dev.connected:
                return Message.new_method_return(msg)
            if dev.connecting is not None:
                raise BluezError("org.bluez.Error.InProgress", "In Progress")
            if dev.connect_failures:
                error, text = dev.connect_failures.pop(0)
                if text != "le-connection-abort-by-local":
                    raise BluezError(error, text)
                dev.connecting = self._spawn(self._connect(msg, dev, abort=(error, text)))
                return True
            dev.connecting = self._spawn(self._connect(msg, dev))
            return True  # answered when the connection is up or has failed
        if member == "Disconnect":
            self.events.append(("Disconnect", address, sender))
            if dev.connecting is not None:
                dev.connecting.cancel()
                return Message.new_method_return(msg)
            if not dev.connected:
                raise not_connected()
            self._teardown(dev, "local")
            return Message.new_method_return(msg)
        if member in ("Pair", "ConnectProfile", "DisconnectProfile", "CancelPairing"):
            raise BluezError("org.bluez.Error.NotSupported", "Operation is not supported")
        raise BluezError("org.freedesktop.DBus.Error.UnknownMethod", f"Device1.{member} is not supported")

    def _char_call(self, msg: Message, dev: _Device, char: _Char) -> Message | bool:
        member, sender = msg.member, msg.sender or ""
        flags = char.spec.flags
        if not dev.connected:
            raise not_connected()
        if member == "ReadValue" and msg.signature == "a{sv}":
            if "read" not in flags:
                raise BluezError("org.bluez.Error.NotPermitted", "Read not permitted")
            value = dev.peripheral.on_read(char.spec.uuid.lower())
            if value is not None:
                char.spec.value = bytes(value)
                self._set(char.path, CHARACTERISTIC, {"Value": _v("ay", char.spec.value)})
            offset = int(msg.body[0].get("offset", _v("q", 0)).value)
            return Message.new_method_return(msg, "ay", [char.spec.value[offset:]])
        if member == "WriteValue" and msg.signature == "aya{sv}":
            data, options = bytes(msg.body[0]), msg.body[1]
            kind = options.get("type", _v("s", "request" if "write" in flags else "command")).value
            needed = "write-without-response" if kind == "command" else "write"
            if needed not in flags:
                raise BluezError("org.bluez.Error.NotPermitted", "Write not permitted")
            self._held = []  # the watch's answers follow the write's own reply, as over the air
            try:
                dev.peripheral.on_write(char.spec.uuid.lower(), data, kind != "command")
            except BluezError:
                self._held = None
                raise
            self._send(Message.new_method_return(msg))
            self._flush_held()
            return True
        if member == "StartNotify":
            if not any(f in flags for f in NOTIFYING_FLAGS):
                raise BluezError("org.bluez.Error.NotSupported", "Operation is not supported")
            if sender in char.sockets:
                raise BluezError("org.bluez.Error.NotPermitted", "Notify acquired")
            was_on = bool(char.sessions or char.sockets)
            char.sessions.add(sender)
            self._subscriptions_changed(dev, char, was_on)
            return Message.new_method_return(msg)
        if member == "StopNotify":
            if sender not in char.sessions:
                raise BluezError("org.bluez.Error.Failed", "No notify session started")
            was_on = True
            char.sessions.discard(sender)
            self._subscriptions_changed(dev, char, was_on)
            return Message.new_method_return(msg)
        if member == "AcquireNotify" and msg.signature == "a{sv}":
            if not any(f in flags for f in NOTIFYING_FLAGS):
                raise BluezError("org.bluez.Error.NotSupported", "Operation is not supported")
            if sender in char.sessions or sender in char.sockets:
                raise BluezError("org.bluez.Error.InProgress", "Operation already in progress")
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            was_on = bool(char.sessions or char.sockets)
            char.sockets[sender] = ours
            # The client closing its end ends the subscription, as BlueZ notices with POLLHUP.
            asyncio.get_running_loop().add_reader(ours.fileno(), self._socket_event, dev, char, sender)
            self._subscriptions_changed(dev, char, was_on)
            reply = Message.new_method_return(msg, "hq", [0, DEFAULT_MTU], unix_fds=[theirs.fileno()])
            # dbus-fast passes the descriptor number as it is when it gets to write: close ours only then.
            self.bus.send(reply).add_done_callback(lambda _fut: theirs.close())
            return True
        if member == "AcquireWrite":
            raise BluezError("org.bluez.Error.NotSupported", "Operation is not supported")
        raise BluezError("org.freedesktop.DBus.Error.UnknownMethod", f"GattCharacteristic1.{member}")

    def _socket_event(self, dev: _Device, char: _Char, client: str) -> None:
        sock = char.sockets.get(client)
        if sock is None:
            return
        try:
            data = sock.recv(1)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._release_socket(dev, char, client)

    def _descriptor_call(self, msg: Message, char: _Char) -> Message:
        props = self._objects[char.cccd_path or ""][DESCRIPTOR]
        if msg.member == "ReadValue":
            return Message.new_method_return(msg, "ay", [props["Value"].value])
        if msg.member == "WriteValue":
            raise BluezError("org.bluez.Error.NotPermitted", "Write not permitted")
        raise BluezError("org.freedesktop.DBus.Error.UnknownMethod", f"GattDescriptor1.{msg.member}")

    def _introspect(self, path: str) -> str:
        prefix = "" if path == "/" else path
        children = sorted({p[len(prefix) + 1:].split("/")[0] for p in self._objects
                           if p.startswith(prefix + "/") and p != path})
        parts = ['<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" '
                 '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">', "<node>",
                 f'<interface name="{INTROSPECTABLE}"><method name="Introspect">'
                 '<arg name="xml" type="s" direction="out"/></method></interface>']
        if path == "/":
            parts.append(f'<interface name="{OBJECT_MANAGER}"><method name="GetManagedObjects">'
                         '<arg name="objects" type="a{oa{sa{sv}}}" direction="out"/></method>'
                         '<signal name="InterfacesAdded"><arg name="object" type="o"/>'
                         '<arg name="interfaces" type="a{sa{sv}}"/></signal>'
                         '<signal name="InterfacesRemoved"><arg name="object" type="o"/>'
                         '<arg name="interfaces" type="as"/></signal></interface>')
        for iface, props in self._objects.get(path, {}).items():
            parts.append(f'<interface name="{iface}">{INTERFACE_METHODS.get(iface, "")}')
            parts.extend(f'<property name="{n}" type="{v.signature}" access="read"/>' for n, v in props.items())
            parts.append("</interface>")
        if path in self._objects:
            parts.append(f'<interface name="{PROPERTIES}"/>')
        parts.extend(f'<node name="{c}"/>' for c in children)
        parts.append("</node>")
        return "".join(parts)


INTERFACE_METHODS = {
    ADAPTER: '<method name="StartDiscovery"/><method name="StopDiscovery"/>'
             '<method name="SetDiscoveryFilter"><arg name="filter" type="a{sv}" direction="in"/></method>'
             '<method name="GetDiscoveryFilters"><arg name="filters" type="as" direction="out"/></method>'
             '<method name="RemoveDevice"><arg name="device" type="o" direction="in"/></method>',
    DEVICE: '<method name="Connect"/><method name="Disconnect"/>',
    CHARACTERISTIC: '<method name="ReadValue"><arg name="options" type="a{sv}" direction="in"/>'
                    '<arg name="value" type="ay" direction="out"/></method>'
                    '<method name="WriteValue"><arg name="value" type="ay" direction="in"/>'
                    '<arg name="options" type="a{sv}" direction="in"/></method>'
                    '<method name="AcquireNotify"><arg name="options" type="a{sv}" direction="in"/>'
                    '<arg name="fd" type="h" direction="out"/><arg name="mtu" type="q" direction="out"/></method>'
                    '<method name="StartNotify"/><method name="StopNotify"/>',
    DESCRIPTOR: '<method name="ReadValue"><arg name="options" type="a{sv}" direction="in"/>'
                '<arg name="value" type="ay" direction="out"/></method>',
}


def _check(reply: Message | None) -> None:
    if reply is None or reply.message_type == MessageType.ERROR:
        raise RuntimeError(f"D-Bus call failed: {reply.body if reply else 'no reply'}")


T = TypeVar("T")


class VirtualBluetooth:
    """The virtual adapter running in a thread of its own (for tests, or to drive it from sync code).

    `with VirtualBluetooth(bus_address, peripherals) as vb:` — `vb.call(fn, *args)` runs fn(adapter, *args)
    on the adapter's event loop and returns its result."""

    def __init__(self, bus_address: str, peripherals: Iterable[Peripheral] = (), **adapter_options: Any) -> None:
        self.bus_address = bus_address
        self._peripherals = list(peripherals)
        self._options = adapter_options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready: Future[VirtualAdapter] = Future()
        self._stop: asyncio.Event | None = None
        self.adapter: VirtualAdapter | None = None

    def start(self) -> VirtualBluetooth:
        self._thread = threading.Thread(target=self._run, name="virtual-bluez", daemon=True)
        self._thread.start()
        self.adapter = self._ready.result(timeout=15)
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            bus = await MessageBus(bus_address=self.bus_address, negotiate_unix_fd=True).connect()
            adapter = VirtualAdapter(bus, **self._options)
            await adapter.start()
            for p in self._peripherals:
                adapter.add(p)
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(adapter)
        await self._stop.wait()
        await adapter.close()
        bus.disconnect()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None and self.adapter is not None
        adapter = self.adapter

        async def run() -> T:
            result = fn(adapter, *args)
            if asyncio.iscoroutine(result):  # stop_bluez, start_bluez
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=15)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(15)

    def __enter__(self) -> VirtualBluetooth:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
