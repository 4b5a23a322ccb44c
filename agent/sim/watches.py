"""Virtual watches: recorded motion, encoded in each supported protocol's wire format, streamed live.

Each class is the firmware side of one watch family as a `Peripheral` of the virtual BlueZ
adapter (`l2mu.agent.sim.bluez`): the GATT services the real watch exposes, the commands it answers
(Polar PMD control point, MetaWear registers, L2MU START/STOP) and its data notifications, made
with the encoders of `l2mu.firmware_bridge`. The motion is a real recording (a WISDM wearer, or
any `replay:` file) read off a `MotionTape` at the protocol's native rate, in real time on the
watch's own clock (`speed` > 1 runs that clock faster, for tests). A disconnected watch keeps
its clock running, so samples during an outage are lost as they are with a real watch.

These are the only firmware models: the virtual BlueZ serves them over D-Bus (bleak, `virtual-watch`,
the Bluetooth tests), and `l2mu.agent.sim.link` connects them in process (the load bench, the fault
tests and soak), both times set up by the agent's own intake.
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from l2mu.agent.events import Sample
from l2mu.agent.recording import read_recording
from l2mu.agent.sim.bluez import BluezError, GattCharacteristic, GattService, Link, Peripheral
from l2mu.firmware_bridge import bangle, infinitime, l2mu_profile, metawear, polar_pmd
from l2mu.firmware_bridge.driver import DEG_TO_RAD, STANDARD_GRAVITY, DecodeError

PROTOCOLS = ("polar", "infinitime", "metawear", "bangle", "l2mu")
# Random static addresses (top bits 11), one per protocol, so a demo's addresses never change.
DEFAULT_ADDRESSES = {p: f"C0:FF:EE:00:00:{i:02X}" for i, p in enumerate(PROTOCOLS, 1)}
HEART_RATE_SERVICE = "0000180d-0000-1000-8000-00805f9b34fb"
HEART_RATE_MEASUREMENT = "00002a37-0000-1000-8000-00805f9b34fb"
NUS_RX = "6e400002-b5a3-f393-e0a9-e50e24dcca9e"
NUS_TX = "6e400003-b5a3-f393-e0a9-e50e24dcca9e"
BATTERY_SERVICE = "0000180f-0000-1000-8000-00805f9b34fb"
BATTERY_LEVEL = "00002a19-0000-1000-8000-00805f9b34fb"


class MotionTape:
    """A recording's accelerometer (and gyroscope) as continuous signals that loop forever."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        streams = {}
        for sensor in ("acc", "gyro"):
            mine = sorted((s for s in samples if s.sensor == sensor), key=lambda s: s.t)
            if len(mine) >= 2:
                streams[sensor] = (np.array([s.t for s in mine]), np.array([s.xyz for s in mine], dtype=float))
        if "acc" not in streams:
            raise ValueError("a virtual watch needs a recording with accelerometer samples")
        t = streams["acc"][0]
        self.t0 = float(t[0])
        self.period = float(t[-1] - t[0]) + float(np.median(np.diff(t)))
        self._streams = streams
        self._labels = sorted(((s.t, s.label) for s in samples if s.label), key=lambda x: x[0])

    @classmethod
    def from_file(cls, path: Path) -> MotionTape:
        return cls(read_recording(path))

    @property
    def has_gyro(self) -> bool:
        return "gyro" in self._streams

    def _wrap(self, times: np.ndarray) -> np.ndarray:
        return self.t0 + np.mod(np.asarray(times, dtype=float), self.period)

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """acc [N, 3] in m/s² and gyro [N, 3] in rad/s (None without one) at tape times (seconds)."""
        local = self._wrap(times)

        def read(sensor: str) -> np.ndarray:
            # np.interp of each column, written as one gather: three interps and a column_stack per
            # block were a large share of a many-watch rig's CPU, which is the simulator's, not the agent's.
            t, v = self._streams[sensor]
            i = np.minimum(np.maximum(t.searchsorted(local, side="right"), 1), len(t) - 1)
            w = np.minimum(np.maximum((local - t[i - 1]) / (t[i] - t[i - 1]), 0.0), 1.0)[:, None]
            return v[i - 1] + w * (v[i] - v[i - 1])

        return read("acc"), read("gyro") if self.has_gyro else None

    def label_at(self, t: float) -> str:
        """The recording's true activity at tape time t ('' if unlabelled)."""
        if not self._labels:
            return ""
        local = float(self._wrap(np.array([t]))[0])
        i = np.searchsorted([x[0] for x in self._labels], local, side="right") - 1
        return self._labels[max(0, int(i))][1]


class WatchClock:
    """A watch's own clock: seconds since it was switched on, running `speed` × real time."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._mono0 = time.monotonic()
        self.unix0 = time.time()

    def now(self) -> float:
        return (time.monotonic() - self._mono0) * self.speed

    def wait_for(self, t: float) -> float:
        """Real seconds until the clock reads t."""
        return (t - self.now()) / self.speed

    def monotonic_at(self, t: float) -> float:
        """time.monotonic() when the clock reads t."""
        return self._mono0 + t / self.speed


class VirtualWatch(Peripheral):
    """Common to every virtual watch: the tape, the clock, the link and its streaming tasks."""

    protocol: ClassVar[str]
    default_name: ClassVar[str]
    data_char: ClassVar[str]  # where its samples go out (and where a damaged link's garbage lands)

    def __init__(self, tape: MotionTape, address: str | None = None, name: str | None = None,
                 speed: float = 1.0) -> None:
        self.tape = tape
        self.clock = WatchClock(speed)
        self.address = (address or DEFAULT_ADDRESSES[self.protocol]).upper()
        self.name = name or self.default_name
        self.offset_s = 0.0  # where on the tape the watch's clock starts: watches of one rig move differently
        self._link: Link | None = None
        self._streams: dict[str, asyncio.Task] = {}
        self.notifications_sent = 0
        # Watch-clock time at which the block being sent fell due: an in-process link stamps its arrival with it,
        # so a late event loop counts against the agent's latency instead of giving it a kinder clock.
        self.due_t: float | None = None
        # CPU seconds this watch's firmware spent making its samples and notifications (the tape read and the
        # encoding, not what the receiver does with them): a load rig runs the watches in the agent's process
        # and subtracts this to tell the agent's own CPU.
        self.firmware_cpu_s = 0.0
        self._receiver_cpu_s = 0.0
        # The Battery Service every one of these families has: full at switch-on, draining as its clock runs.
        self.battery_full = 100
        self.battery_drain_s = 40.0  # watch-clock seconds per percent (short, so tests see it change)

    def services(self) -> list[GattService]:
        return [*self.protocol_services(), GattService(BATTERY_SERVICE, [
            GattCharacteristic(BATTERY_LEVEL, ("read", "notify"), bytes([self.battery_level()]))])]

    def protocol_services(self) -> list[GattService]:
        return []

    def battery_level(self) -> int:
        return max(1, self.battery_full - int(self.clock.now() / self.battery_drain_s))

    def on_read(self, char_uuid: str) -> bytes | None:
        if char_uuid == BATTERY_LEVEL:
            return bytes([self.battery_level()])
        return None

    def on_notify_enabled(self, char_uuid: str, enabled: bool) -> None:
        if char_uuid != BATTERY_LEVEL:
            return
        if enabled:
            self._start_stream("battery", self._battery())
        else:
            self._stop_stream("battery")

    async def _battery(self) -> AsyncIterator[None]:
        level = self.battery_level()
        while True:  # notified on change, as a real Battery Service does
            await asyncio.sleep(self.clock.wait_for((self.battery_full - level + 1) * self.battery_drain_s) + 0.01)
            now = self.battery_level()
            if now != level:
                level = now
                self.send(BATTERY_LEVEL, bytes([level]))
            yield

    def on_connect(self, link: Link) -> None:
        self._link = link

    def on_disconnect(self) -> None:
        self._link = None
        for key in list(self._streams):
            self._stop_stream(key)
        self.reset()

    def reset(self) -> None:
        """Forget per-connection state (what was configured and started)."""

    def send(self, char_uuid: str, data: bytes) -> None:
        if self._link is None:
            return
        c0 = time.thread_time()
        if self._link.notify(char_uuid, data):  # an in-process link runs the receiver's intake right here
            self.notifications_sent += 1
        self._receiver_cpu_s += time.thread_time() - c0

    def _start_stream(self, key: str, stream: AsyncIterator[None]) -> None:
        self._stop_stream(key)

        async def drain() -> None:
            async for _ in stream:
                pass

        self._streams[key] = asyncio.get_running_loop().create_task(drain())

    def _stop_stream(self, key: str) -> None:
        task = self._streams.pop(key, None)
        if task is not None:
            task.cancel()

    def streaming(self, key: str) -> bool:
        return key in self._streams

    async def blocks(self, rate_hz: float, per_packet: int
                     ) -> AsyncIterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(watch times, acc, gyro) of the next `per_packet` samples, each block once its last sample
        has been taken. A late event loop sends the blocks it owes back to back, as a BLE queue does."""
        i = math.ceil(self.clock.now() * rate_hz)
        while True:
            times = (i + np.arange(per_packet)) / rate_hz
            delay = self.clock.wait_for(float(times[-1]))
            if delay > 0:
                await asyncio.sleep(delay)
            c0, self._receiver_cpu_s = time.thread_time(), 0.0
            acc, gyro = self.tape.at(times + self.offset_s)
            self.due_t = float(times[-1])
            yield times, acc, gyro  # the protocol encodes and sends the block before asking for the next
            self.firmware_cpu_s += time.thread_time() - c0 - self._receiver_cpu_s
            self.due_t = None
            i += per_packet


def _counts(values: np.ndarray, scale: float) -> list[tuple[int, int, int]]:
    """SI values × scale → int16 counts, rounded and saturated."""
    c = np.clip(np.rint(values * scale), -32768, 32767).astype(int)
    return [tuple(r) for r in c.tolist()]


# --- Polar PMD ----------------------------------------------------------------------------------


class PolarWatch(VirtualWatch):
    """Polar Verity Sense (ACC + GYRO at 52 Hz); with gyro=False an OH1 (ACC only)."""

    protocol = "polar"
    default_name = "Polar Sense 1A2B3C4D"
    data_char = polar_pmd.PMD_DATA
    RATE_HZ = 52
    FRAME_SAMPLES = 13
    ACC_RANGES_G = (2, 4, 8, 16)
    GYRO_RANGES_DPS = (250, 500, 1000, 2000)

    def __init__(self, tape: MotionTape, address: str | None = None, name: str | None = None,
                 speed: float = 1.0, gyro: bool = True) -> None:
        super().__init__(tape, address, name or (self.default_name if gyro else "Polar OH1 1A2B3C4D"), speed)
        self.has_gyro = gyro and tape.has_gyro

    def advertised_uuids(self) -> list[str]:
        return [HEART_RATE_SERVICE]

    def protocol_services(self) -> list[GattService]:
        return [
            GattService(HEART_RATE_SERVICE, [GattCharacteristic(HEART_RATE_MEASUREMENT, ("notify",))]),
            GattService(polar_pmd.PMD_SERVICE, [
                GattCharacteristic(polar_pmd.PMD_CONTROL_POINT, ("read", "write", "indicate"), self._features()),
                GattCharacteristic(polar_pmd.PMD_DATA, ("notify",)),
            ]),
        ]

    def _features(self) -> bytes:
        byte1 = 0x04 | (0x20 if self.has_gyro else 0)  # ACC, GYRO
        return bytes((0x0F, byte1, 0x00))

    def _kinds(self) -> dict[int, tuple[int, ...]]:
        kinds = {polar_pmd.MeasurementType.ACC: self.ACC_RANGES_G}
        if self.has_gyro:
            kinds[polar_pmd.MeasurementType.GYRO] = self.GYRO_RANGES_DPS
        return kinds

    def on_read(self, char_uuid: str) -> bytes | None:
        return self._features() if char_uuid == polar_pmd.PMD_CONTROL_POINT else super().on_read(char_uuid)

    def on_write(self, char_uuid: str, data: bytes, with_response: bool) -> None:
        if char_uuid != polar_pmd.PMD_CONTROL_POINT:
            raise BluezError("org.bluez.Error.NotPermitted", "Write not permitted")
        if len(data) < 2:
            raise BluezError("org.bluez.Error.InvalidValueLength", "Invalid Length")
        op, kind = data[0], data[1] & polar_pmd.MEASUREMENT_TYPE_MASK
        status = polar_pmd.ResponseStatus
        kinds = self._kinds()
        if kind not in kinds:
            self._answer(op, kind, status.ERROR_NOT_SUPPORTED)
        elif op == polar_pmd.ControlPointOp.GET_MEASUREMENT_SETTINGS:
            ranges = kinds[kind]
            offer = (bytes((polar_pmd.SettingType.SAMPLE_RATE, 1)) + struct.pack("<H", self.RATE_HZ)
                     + bytes((polar_pmd.SettingType.RESOLUTION, 1)) + struct.pack("<H", 16)
                     + bytes((polar_pmd.SettingType.RANGE, len(ranges))) + struct.pack(f"<{len(ranges)}H", *ranges)
                     + bytes((polar_pmd.SettingType.CHANNELS, 1, 3)))
            self._answer(op, kind, status.SUCCESS, offer)
        elif op == polar_pmd.ControlPointOp.REQUEST_MEASUREMENT_START:
            self._start(kind, data[2:])
        elif op == polar_pmd.ControlPointOp.STOP_MEASUREMENT:
            self._stop_stream(str(kind))
            self._answer(op, kind, status.SUCCESS)
        else:
            self._answer(op, kind, status.ERROR_INVALID_OP_CODE)

    def _answer(self, op: int, kind: int, status: int, parameters: bytes = b"") -> None:
        self.send(polar_pmd.PMD_CONTROL_POINT,
                  polar_pmd.encode_control_point_response(op, kind, status, parameters))

    def _start(self, kind: int, settings_bytes: bytes) -> None:
        op, status = polar_pmd.ControlPointOp.REQUEST_MEASUREMENT_START, polar_pmd.ResponseStatus
        try:
            settings = polar_pmd.parse_settings(settings_bytes)
        except DecodeError:
            self._answer(op, kind, status.ERROR_INVALID_PARAMETER)
            return
        rate = settings.get(polar_pmd.SettingType.SAMPLE_RATE, (self.RATE_HZ,))[0]
        ranges = self._kinds()[kind]
        full_scale = settings.get(polar_pmd.SettingType.RANGE, (ranges[-1],))[0]
        if rate != self.RATE_HZ:
            self._answer(op, kind, status.ERROR_INVALID_SAMPLE_RATE)
        elif full_scale not in ranges:
            self._answer(op, kind, status.ERROR_INVALID_RANGE)
        elif self.streaming(str(kind)):
            self._answer(op, kind, status.ERROR_ALREADY_IN_STATE)
        else:
            # ACC goes out as compressed type 1 in mG (factor 1); GYRO as int16 counts of range/32768 deg/s.
            factor = 1.0 if kind == polar_pmd.MeasurementType.ACC else full_scale / 32768.0
            parameters = bytes((polar_pmd.SettingType.FACTOR, 1)) + struct.pack("<f", factor)
            self._answer(op, kind, status.SUCCESS, parameters)
            self._start_stream(str(kind), self._frames(kind, struct.unpack("<f", struct.pack("<f", factor))[0]))

    def _polar_ns(self, t: float) -> int:
        return round((self.clock.unix0 + t - polar_pmd.POLAR_EPOCH_UNIX_S) * 1e9)

    async def _frames(self, kind: int, factor: float) -> AsyncIterator[None]:
        async for times, acc, gyro in self.blocks(self.RATE_HZ, self.FRAME_SAMPLES):
            stamp = self._polar_ns(float(times[-1]))
            if kind == polar_pmd.MeasurementType.ACC:
                frame = polar_pmd.encode_acc_frame(stamp, _counts(acc, 1000.0 / STANDARD_GRAVITY))
            else:
                assert gyro is not None
                frame = polar_pmd.encode_gyro_frame(stamp, _counts(gyro, 1.0 / DEG_TO_RAD / factor))
            self.send(polar_pmd.PMD_DATA, frame)
            yield


# --- InfiniTime ---------------------------------------------------------------------------------


class InfiniTimeWatch(VirtualWatch):
    """PineTime with InfiniTime: the Motion Service, polled at 10 Hz, notified only on change."""

    protocol = "infinitime"
    default_name = "InfiniTime"
    data_char = infinitime.MOTION_VALUES_CHAR

    def protocol_services(self) -> list[GattService]:
        return [GattService(infinitime.MOTION_SERVICE, [
            GattCharacteristic(infinitime.STEP_COUNT_CHAR, ("read", "notify"), struct.pack("<I", 0)),
            GattCharacteristic(infinitime.MOTION_VALUES_CHAR, ("read", "notify")),
        ])]

    def _value_now(self) -> bytes:
        acc, _ = self.tape.at(np.array([self.clock.now() + self.offset_s]))
        return infinitime.encode_motion_values(acc[0])

    def on_read(self, char_uuid: str) -> bytes | None:
        if char_uuid == infinitime.MOTION_VALUES_CHAR:
            return self._value_now()
        if char_uuid == infinitime.STEP_COUNT_CHAR:
            return struct.pack("<I", int(self.clock.now() * 1.6))
        return super().on_read(char_uuid)

    def on_notify_enabled(self, char_uuid: str, enabled: bool) -> None:
        if char_uuid != infinitime.MOTION_VALUES_CHAR:
            super().on_notify_enabled(char_uuid, enabled)
            return
        if enabled:
            self._start_stream("motion", self._poll())
        else:
            self._stop_stream("motion")

    async def _poll(self) -> AsyncIterator[None]:
        last = b""
        async for _times, acc, _gyro in self.blocks(infinitime.POLL_RATE_HZ, 1):
            value = infinitime.encode_motion_values(acc[0])
            if value != last:  # the firmware stays quiet while the reading does not change
                self.send(infinitime.MOTION_VALUES_CHAR, value)
                last = value
            yield


# --- MetaWear -----------------------------------------------------------------------------------


class MetaWearWatch(VirtualWatch):
    """MetaMotion with a BMI160 (accelerometer + gyroscope); gyro=False: a board without gyroscope."""

    protocol = "metawear"
    default_name = "MetaWear"
    data_char = metawear.METAWEAR_NOTIFY_CHAR
    PACKED_PER_NOTIFICATION = 3

    def __init__(self, tape: MotionTape, address: str | None = None, name: str | None = None,
                 speed: float = 1.0, gyro: bool = True) -> None:
        super().__init__(tape, address, name, speed)
        self.has_gyro = gyro and tape.has_gyro
        self.regs = metawear.REGISTERS["bmi160"]
        self.reset()

    def reset(self) -> None:
        # The BMI160's power-on defaults: 100 Hz, ±2 g; gyro 100 Hz, ±2000 °/s.
        self.acc_rate, self.acc_range = 100.0, 2
        self.gyro_rate, self.gyro_range_index = 100.0, 0
        self.subscribed: dict[int, int | None] = {metawear.MODULE_ACCELEROMETER: None, metawear.MODULE_GYRO: None}
        self.interrupt = {metawear.MODULE_ACCELEROMETER: False, metawear.MODULE_GYRO: False}
        self.powered = {metawear.MODULE_ACCELEROMETER: False, metawear.MODULE_GYRO: False}

    def advertised_uuids(self) -> list[str]:
        return [metawear.METAWEAR_SERVICE]

    def protocol_services(self) -> list[GattService]:
        return [GattService(metawear.METAWEAR_SERVICE, [
            GattCharacteristic(metawear.METAWEAR_COMMAND_CHAR, ("write-without-response", "write")),
            GattCharacteristic(metawear.METAWEAR_NOTIFY_CHAR, ("notify",)),
        ])]

    def on_write(self, char_uuid: str, data: bytes, with_response: bool) -> None:
        if char_uuid != metawear.METAWEAR_COMMAND_CHAR:
            raise BluezError("org.bluez.Error.NotPermitted", "Write not permitted")
        if len(data) < 2:
            return  # the board ignores what it cannot parse
        module, register = data[0], data[1]
        acc, gyro = metawear.MODULE_ACCELEROMETER, metawear.MODULE_GYRO
        if register == metawear.READ_BIT | metawear.INFO_REGISTER:
            if module == acc:
                self.send(metawear.METAWEAR_NOTIFY_CHAR, bytes((acc, register, self.regs.acc_impl, 1)))
            elif module == gyro:
                info = bytes((self.regs.gyro_impl, 1)) if self.has_gyro else b""
                self.send(metawear.METAWEAR_NOTIFY_CHAR, bytes((gyro, register)) + info)
            return
        if module not in (acc, gyro) or (module == gyro and not self.has_gyro):
            return
        payload = data[2:]
        if register == metawear.CONFIG and len(payload) >= 2:
            if module == acc:
                odr = payload[0] & 0x0F
                if 1 <= odr <= len(metawear.ACC_ODRS_HZ):
                    self.acc_rate = metawear.ACC_ODRS_HZ[odr - 1]
                self.acc_range = metawear.acc_range_from_config("bmi160", payload[:2]) or self.acc_range
            else:
                codes = {v: k for k, v in metawear.GYRO_ODR_CODES.items()}
                self.gyro_rate = codes.get(payload[0] & 0x0F, self.gyro_rate)
                self.gyro_range_index = min(payload[1] & 0x07, len(metawear.GYRO_RANGES_DPS) - 1)
        elif register in self._data_registers(module) and payload:
            self.subscribed[module] = register if payload[0] else None
        elif register == metawear.DATA_INTERRUPT_ENABLE and len(payload) >= 2:
            self.interrupt[module] = bool(payload[0])
        elif register == metawear.POWER_MODE and payload:
            self.powered[module] = bool(payload[0])
        self._update_streams()

    def _data_registers(self, module: int) -> tuple[int, int]:
        if module == metawear.MODULE_ACCELEROMETER:
            return self.regs.acc_data, self.regs.acc_packed
        return self.regs.gyro_data, self.regs.gyro_packed

    def _update_streams(self) -> None:
        for module in (metawear.MODULE_ACCELEROMETER, metawear.MODULE_GYRO):
            key = str(module)
            on = self.powered[module] and self.interrupt[module] and self.subscribed[module] is not None
            if on and not self.streaming(key):
                self._start_stream(key, self._notify(module))
            elif not on and self.streaming(key):
                self._stop_stream(key)

    async def _notify(self, module: int) -> AsyncIterator[None]:
        register = self.subscribed[module]
        assert register is not None
        packed = register == self._data_registers(module)[1]
        per = self.PACKED_PER_NOTIFICATION if packed else 1
        is_acc = module == metawear.MODULE_ACCELEROMETER
        rate = self.acc_rate if is_acc else self.gyro_rate
        async for _times, acc, gyro in self.blocks(rate, per):
            if is_acc:
                counts = _counts(acc, metawear.ACC_LSB_PER_G[self.acc_range] / STANDARD_GRAVITY)
            else:
                assert gyro is not None
                counts = _counts(gyro, metawear.GYRO_LSB_PER_DPS[self.gyro_range_index] / DEG_TO_RAD)
            self.send(metawear.METAWEAR_NOTIFY_CHAR, metawear.encode_notification(module, register, counts))
            yield


# --- L2MU IMU profile and Bangle.js -------------------------------------------------------------


class L2muWatch(VirtualWatch):
    """Any watch speaking the L2MU IMU profile (PROTOCOL.md), here with accelerometer and gyroscope."""

    protocol = "l2mu"
    default_name = "L2MU IMU"
    data_char = l2mu_profile.L2MU_IMU_CHAR
    RATES_HZ: ClassVar[tuple[float, ...]] = (12.5, 20.0, 25.0, 50.0, 100.0)
    DEFAULT_RATE_HZ: ClassVar[float] = 25.0
    ACC_RANGE_G: ClassVar[int] = 8
    GYRO_RANGE_DPS: ClassVar[int] = 2000
    DEFAULT_MAX_SAMPLES = 8
    PAYLOAD_BYTES = 128  # what one notification carries at the MTU the watch negotiates

    def __init__(self, tape: MotionTape, address: str | None = None, name: str | None = None,
                 speed: float = 1.0, gyro: bool = True) -> None:
        super().__init__(tape, address, name, speed)
        self.has_gyro = gyro and tape.has_gyro
        self.seq = 0
        self.rate_hz = self.DEFAULT_RATE_HZ

    def advertised_uuids(self) -> list[str]:
        return [l2mu_profile.L2MU_SERVICE]

    def protocol_services(self) -> list[GattService]:
        return [GattService(l2mu_profile.L2MU_SERVICE, [
            GattCharacteristic(l2mu_profile.L2MU_IMU_CHAR, ("read", "notify")),
            GattCharacteristic(l2mu_profile.L2MU_CONTROL_CHAR, ("write", "write-without-response")),
        ])]

    def pick_rate(self, requested_hz: float) -> float:
        if requested_hz <= 0:
            return self.DEFAULT_RATE_HZ
        return min(self.RATES_HZ, key=lambda r: (abs(r - requested_hz), -r))

    def on_write(self, char_uuid: str, data: bytes, with_response: bool) -> None:
        if char_uuid != l2mu_profile.L2MU_CONTROL_CHAR:
            raise BluezError("org.bluez.Error.NotPermitted", "Write not permitted")
        if not data:
            return
        if data[0] == l2mu_profile.OP_START:
            rate_chz = int.from_bytes(data[1:3], "little") if len(data) >= 3 else 0
            wanted = data[3] if len(data) >= 4 else 0
            cap = (self.PAYLOAD_BYTES - l2mu_profile.HEADER.size) // (12 if self.has_gyro else 6)
            self.rate_hz = self.pick_rate(rate_chz / 100.0)
            per_packet = min(wanted, cap) if wanted else min(self.DEFAULT_MAX_SAMPLES, cap)
            self._start_stream("imu", self._packets(per_packet))  # a START while streaming applies new values
        elif data[0] == l2mu_profile.OP_STOP:
            self._stop_stream("imu")
        # unknown opcodes are ignored (PROTOCOL.md)

    async def _packets(self, per_packet: int) -> AsyncIterator[None]:
        encoder = l2mu_profile.L2muEncoder(self.rate_hz, acc_range_g=self.ACC_RANGE_G,
                                           gyro_range_dps=self.GYRO_RANGE_DPS if self.has_gyro else 0,
                                           seq=self.seq, max_samples=per_packet)
        async for times, acc, gyro in self.blocks(self.rate_hz, per_packet):
            packet = encoder.packet(float(times[0]), acc.tolist(), gyro.tolist() if self.has_gyro and gyro is not None
                                    else None)
            self.seq = encoder.seq
            self.send(l2mu_profile.L2MU_IMU_CHAR, packet)
            yield


class BangleWatch(L2muWatch):
    """Bangle.js 2 running firmware/bangle/l2mu-imu.js: accelerometer only, ±4 g, 12.5–100 Hz."""

    protocol = "bangle"
    default_name = "Bangle.js 1a2b"
    RATES_HZ = bangle.BANGLE_RATES_HZ
    DEFAULT_RATE_HZ = 12.5
    ACC_RANGE_G = bangle.BANGLE_ACC_RANGE_G

    def __init__(self, tape: MotionTape, address: str | None = None, name: str | None = None,
                 speed: float = 1.0, gyro: bool = False) -> None:
        super().__init__(tape, address, name, speed, gyro=False)

    def advertised_uuids(self) -> list[str]:
        return [l2mu_profile.L2MU_SERVICE, bangle.NORDIC_UART_SERVICE]

    def protocol_services(self) -> list[GattService]:
        return [*super().protocol_services(), GattService(bangle.NORDIC_UART_SERVICE, [
            GattCharacteristic(NUS_RX, ("write", "write-without-response")),
            GattCharacteristic(NUS_TX, ("notify",)),
        ])]

    def on_write(self, char_uuid: str, data: bytes, with_response: bool) -> None:
        if char_uuid == NUS_RX:
            return  # the Espruino console; nothing to say to it here
        super().on_write(char_uuid, data, with_response)


WATCH_CLASSES: dict[str, type[VirtualWatch]] = {
    "polar": PolarWatch, "infinitime": InfiniTimeWatch, "metawear": MetaWearWatch, "bangle": BangleWatch,
    "l2mu": L2muWatch,
}


def make_watch(protocol: str, tape: MotionTape, address: str | None = None, speed: float = 1.0,
               gyro: bool | None = None, name: str | None = None) -> VirtualWatch:
    """A virtual watch of one protocol; gyro=False takes the gyroscope out where the family has one."""
    try:
        cls = WATCH_CLASSES[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}; virtual watches: {', '.join(PROTOCOLS)}") from None
    if gyro is None:
        return cls(tape, address, name, speed)
    if cls in (PolarWatch, MetaWearWatch, L2muWatch):
        return cls(tape, address, name, speed, gyro=gyro)  # type: ignore[call-arg]
    if gyro:
        raise ValueError(f"a virtual {protocol} watch has no gyroscope")
    return cls(tape, address, name, speed)
