"""Virtual watches for load and fault tests: real samples → a watch protocol's notification bytes, played in real time.

A `VirtualWatch` turns a recording (real WISDM data: the bundled demo, or any `replay:` file) into
the exact notifications one watch family sends at its native rate — built with the
firmware_bridge encoders, so the agent's drivers decode the same bytes a radio would hand them —
and answers the driver's set-up writes as the watch would (Polar settings and start answers,
MetaWear module info). `Player` delivers every watch's notifications to its `NotificationSource`
when they fall due on the monotonic clock, and injects faults on request: garbage frames and
link drops (notifications due while the link is down are lost; on reconnect the driver is reset
and the set-up handshake runs again, as after a BLE reconnect).

Notifications are encoded before playing starts, so playing costs the agent's process only the
scheduling and the hand-over, as bleak's callbacks would.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import struct
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l2mu.agent.errors import UserError
from l2mu.agent.events import Sample
from l2mu.agent.intake import NotificationSource
from l2mu.agent.recording import read_recording
from l2mu.firmware_bridge.driver import DEG_TO_RAD, STANDARD_GRAVITY, GattWrite, WatchDriver
from l2mu.firmware_bridge.infinitime import MOTION_VALUES_CHAR, InfiniTimeDriver, encode_motion_values
from l2mu.firmware_bridge.l2mu_profile import L2MU_IMU_CHAR, L2muDriver, L2muEncoder
from l2mu.firmware_bridge.metawear import (
    INFO_REGISTER,
    METAWEAR_NOTIFY_CHAR,
    MODULE_ACCELEROMETER,
    MODULE_GYRO,
    READ_BIT,
    MetaWearDriver,
    encode_notification,
)
from l2mu.firmware_bridge.polar_pmd import (
    PMD_CONTROL_POINT,
    PMD_DATA,
    ControlPointOp,
    MeasurementType,
    PmdStreamSettings,
    PolarPmdDriver,
    SettingType,
    encode_acc_frame,
    encode_control_point_response,
    encode_gyro_frame,
    encode_settings,
)

# Protocol @ native rate. Every one of them carries what the default model needs (acc + gyro); the
# acc-only families (Bangle.js, InfiniTime) join the mix for a model that reads the accelerometer only.
DEFAULT_MIX = ("polar@52", "metawear@50", "l2mu@20", "metawear@25", "l2mu@50", "bangle@25", "infinitime@10")
PROTOCOL_SENSORS = {"polar": {"acc", "gyro"}, "metawear": {"acc", "gyro"}, "l2mu": {"acc", "gyro"},
                    "bangle": {"acc"}, "infinitime": {"acc"}}
POLAR_SAMPLES_PER_FRAME = 16  # ~0.3 s at 52 Hz, as a Verity Sense batches its PMD frames
POLAR_GYRO_FACTOR = 2000 / 32768  # deg/s per count at ±2000 deg/s, sent in the start answer
L2MU_SAMPLES = {True: 9, False: 19}  # per packet with/without gyro: a 131-byte MTU (PROTOCOL.md)
METAWEAR_ACC_LSB_PER_G = 4096.0  # ±8 g, the driver's default range
METAWEAR_GYRO_LSB_PER_DPS = 16.4  # ±2000 deg/s
POLAR_CLOCK_ORIGIN_S = 800_000_000.0  # a Polar clock in 2025 (its epoch is 2000-01-01)
L2MU_CLOCK_ORIGIN_S = 3600.0  # an L2MU-profile watch's clock: an hour after it booted


class WatchSpecError(UserError):
    """A virtual watch kind or mix that cannot be made."""


class Histogram:
    """Durations in 0.1 ms bins up to 10 s (beyond: the last bin): percentiles in constant memory, so a soak
    that runs for hours does not grow by what it measures."""

    BIN_S = 1e-4

    def __init__(self, top_s: float = 10.0) -> None:
        self.counts = np.zeros(int(top_s / self.BIN_S) + 1, dtype=np.int64)
        self.n = 0
        self.max_s = 0.0

    def add(self, seconds: float) -> None:
        self.counts[min(len(self.counts) - 1, max(0, int(seconds / self.BIN_S)))] += 1
        self.n += 1
        self.max_s = max(self.max_s, seconds)

    def percentile_ms(self, q: float) -> float | None:
        """Upper edge of the bin holding the q-th percentile (at most the largest value), in ms; None when empty."""
        if self.n == 0:
            return None
        rank = max(1, int(np.ceil(q / 100 * self.n)))
        edge = (int(np.searchsorted(np.cumsum(self.counts), rank)) + 1) * self.BIN_S
        return round(min(edge, self.max_s) * 1000, 1)


@dataclass(frozen=True)
class WatchKind:
    protocol: str
    rate_hz: float

    @classmethod
    def parse(cls, spec: str) -> WatchKind:
        """`polar@52`, `metawear@25`, `l2mu@20`, `bangle@25`, `infinitime@10`."""
        protocol, _, rate = spec.strip().partition("@")
        if protocol not in PROTOCOL_SENSORS:
            raise WatchSpecError(f"watch kind {spec!r}: protocol must be one of {', '.join(PROTOCOL_SENSORS)}")
        try:
            rate_hz = float(rate) if rate else {"polar": 52.0, "metawear": 50.0, "infinitime": 10.0}.get(protocol, 25.0)
        except ValueError:
            raise WatchSpecError(f"watch kind {spec!r}: rate must be a number of Hz") from None
        if protocol == "infinitime" and rate_hz != 10.0:
            raise WatchSpecError(f"watch kind {spec!r}: InfiniTime polls its accelerometer at 10 Hz only")
        if not 5 <= rate_hz <= 200:
            raise WatchSpecError(f"watch kind {spec!r}: rate must be 5-200 Hz")
        return cls(protocol, rate_hz)

    @property
    def sensors(self) -> set[str]:
        return PROTOCOL_SENSORS[self.protocol]

    def __str__(self) -> str:
        return f"{self.protocol}@{self.rate_hz:g}"


def mix_for(sensors: Sequence[str], specs: Sequence[str] = DEFAULT_MIX) -> list[WatchKind]:
    """The kinds in `specs` whose protocol carries every sensor the model reads."""
    kinds = [WatchKind.parse(s) for s in specs]
    usable = [k for k in kinds if set(sensors) <= k.sensors]
    if not usable:
        raise WatchSpecError(f"no watch kind in {', '.join(specs)} streams {'+'.join(sensors)}, which the model needs")
    return usable


def make_driver(kind: WatchKind) -> WatchDriver:
    """The driver a runner would pick for this watch, configured as its set-up leaves it."""
    if kind.protocol == "polar":
        return PolarPmdDriver(acc=PmdStreamSettings(round(kind.rate_hz), 16, 8),
                              gyro=PmdStreamSettings(round(kind.rate_hz), 16, 2000))
    if kind.protocol == "metawear":
        return MetaWearDriver(rate_hz=kind.rate_hz)
    if kind.protocol == "l2mu":
        return L2muDriver(rate_hz=kind.rate_hz)
    if kind.protocol == "bangle":
        from l2mu.firmware_bridge.bangle import BangleDriver

        return BangleDriver(rate_hz=kind.rate_hz)
    return InfiniTimeDriver()


@dataclass
class Signal:
    """A recording's acc and gyro on their own timestamps, readable at any time by looping it."""

    t_acc: np.ndarray
    acc: np.ndarray
    t_gyro: np.ndarray | None
    gyro: np.ndarray | None
    period: float

    @classmethod
    def from_samples(cls, samples: Sequence[Sample]) -> Signal:
        def arrays(sensor: str) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
            mine = sorted((s for s in samples if s.sensor == sensor), key=lambda s: s.t)
            if len(mine) < 2:
                return None, None
            return np.array([s.t for s in mine]), np.array([s.xyz for s in mine], dtype=float)

        t_acc, acc = arrays("acc")
        if t_acc is None or acc is None:
            raise WatchSpecError("the recording has no accelerometer samples")
        t_gyro, gyro = arrays("gyro")
        t0 = t_acc[0] if t_gyro is None else min(t_acc[0], t_gyro[0])
        t1 = t_acc[-1] if t_gyro is None else max(t_acc[-1], t_gyro[-1])
        return cls(t_acc - t0, acc, None if t_gyro is None else t_gyro - t0, gyro, float(t1 - t0))

    @classmethod
    def from_file(cls, path: Path) -> Signal:
        return cls.from_samples(read_recording(path))

    def read(self, times: np.ndarray, sensor: str) -> np.ndarray:
        """Values at `times` (seconds from the recording's start, wrapping around), linearly interpolated."""
        t, v = (self.t_acc, self.acc) if sensor == "acc" else (self.t_gyro, self.gyro)
        if t is None or v is None:
            raise WatchSpecError(f"the recording has no {sensor} samples")
        wrapped = np.mod(times, self.period)
        return np.stack([np.interp(wrapped, t, v[:, i]) for i in range(3)], axis=1)


@dataclass(order=True)
class Notification:
    due: float  # seconds after the watch started streaming
    char_uuid: str = field(compare=False)
    data: bytes = field(compare=False)


class VirtualWatch:
    """One watch: its protocol's notifications for `seconds` of a recording, starting `offset_s` into it."""

    def __init__(self, watch_id: str, kind: WatchKind, signal: Signal, seconds: float, offset_s: float = 0.0,
                 start_delay_s: float = 0.0) -> None:
        self.watch_id = watch_id
        self.kind = kind
        self.start_delay_s = start_delay_s
        n = int(seconds * kind.rate_hz)
        if kind.protocol == "metawear":
            n -= n % 3  # its packed notifications carry three samples each
        self.times = np.arange(n) / kind.rate_hz  # the watch's sampling instants, from the stream's start
        acc = signal.read(offset_s + self.times, "acc")
        gyro = signal.read(offset_s + self.times, "gyro") if "gyro" in kind.sensors else None
        self.notifications = sorted(self._encode(acc, gyro))

    def _encode(self, acc: np.ndarray, gyro: np.ndarray | None) -> list[Notification]:
        k = self.kind
        times = self.times
        if k.protocol == "polar":
            return _polar(times, acc, gyro)
        if k.protocol == "metawear":
            return _metawear(times, acc, gyro)
        if k.protocol == "infinitime":
            return [Notification(float(t), MOTION_VALUES_CHAR, encode_motion_values(a)) for t, a in zip(times, acc,
                                                                                                     strict=True)]
        per = L2MU_SAMPLES[gyro is not None]
        enc = L2muEncoder(k.rate_hz, acc_range_g=4 if k.protocol == "bangle" else 8,
                          gyro_range_dps=2000 if gyro is not None else 0, max_samples=per)
        out = []
        for start in range(0, len(times), per):
            end = min(start + per, len(times))
            packet = enc.packet(L2MU_CLOCK_ORIGIN_S + float(times[start]), acc[start:end].tolist(),
                                None if gyro is None else gyro[start:end].tolist())
            out.append(Notification(float(times[end - 1]), L2MU_IMU_CHAR, packet))
        return out

    def respond(self, write: GattWrite) -> list[tuple[str, bytes]]:
        """What the watch notifies in answer to one of the driver's set-up writes."""
        data = bytes(write.data)
        if self.kind.protocol == "polar" and write.char_uuid == PMD_CONTROL_POINT and len(data) >= 2:
            kind = data[1]
            if data[0] == ControlPointOp.GET_MEASUREMENT_SETTINGS:
                offer = {SettingType.SAMPLE_RATE: round(self.kind.rate_hz), SettingType.RESOLUTION: 16,
                         SettingType.RANGE: 8 if kind == MeasurementType.ACC else 2000}
                return [(PMD_CONTROL_POINT, encode_control_point_response(data[0], kind,
                                                                          parameters=encode_settings(offer)))]
            if data[0] == ControlPointOp.REQUEST_MEASUREMENT_START:
                factor = 1.0 if kind == MeasurementType.ACC else POLAR_GYRO_FACTOR
                answer = bytes([SettingType.FACTOR, 1]) + struct.pack("<f", factor)
                return [(PMD_CONTROL_POINT, encode_control_point_response(data[0], kind, parameters=answer))]
        if self.kind.protocol == "metawear" and len(data) == 2 and data[1] == READ_BIT | INFO_REGISTER:
            implementation = 1 if data[0] == MODULE_ACCELEROMETER else 0  # BMI160 board, revision 1: packed data
            return [(METAWEAR_NOTIFY_CHAR, bytes((data[0], data[1], implementation, 1)))]
        return []

    def connect(self, source: NotificationSource) -> None:
        """The set-up a runner does after connecting: prepare writes, start writes, each answered."""
        driver = source.driver
        for write in [*driver.prepare_commands(), *driver.start_commands()]:
            for char_uuid, data in self.respond(write):
                source.on_notification(char_uuid, data)


def _polar(times: np.ndarray, acc: np.ndarray, gyro: np.ndarray | None) -> list[Notification]:
    out = []
    acc_mg = np.round(acc / STANDARD_GRAVITY * 1000).astype(int)
    gyro_counts = None if gyro is None else np.clip(np.round(gyro / DEG_TO_RAD / POLAR_GYRO_FACTOR), -32768, 32767)
    for start in range(0, len(times), POLAR_SAMPLES_PER_FRAME):
        end = min(start + POLAR_SAMPLES_PER_FRAME, len(times))
        last = float(times[end - 1])
        stamp_ns = round((POLAR_CLOCK_ORIGIN_S + last) * 1e9)
        out.append(Notification(last, PMD_DATA, encode_acc_frame(stamp_ns, acc_mg[start:end].tolist())))
        if gyro_counts is not None:
            out.append(Notification(last, PMD_DATA, encode_gyro_frame(stamp_ns, gyro_counts[start:end].astype(int)
                                                                      .tolist())))
    return out


def _metawear(times: np.ndarray, acc: np.ndarray, gyro: np.ndarray | None) -> list[Notification]:
    # BMI160 packed registers: three consecutive samples per notification, sent once the third is taken.
    out = []
    acc_counts = np.round(acc / STANDARD_GRAVITY * METAWEAR_ACC_LSB_PER_G).astype(int)
    gyro_counts = None if gyro is None else np.round(gyro / DEG_TO_RAD * METAWEAR_GYRO_LSB_PER_DPS).astype(int)
    for start in range(0, len(times) - 2, 3):
        due = float(times[start + 2])
        out.append(Notification(due, METAWEAR_NOTIFY_CHAR,
                                encode_notification(MODULE_ACCELEROMETER, 0x1C, acc_counts[start:start + 3].tolist())))
        if gyro_counts is not None:
            out.append(Notification(due, METAWEAR_NOTIFY_CHAR,
                                    encode_notification(MODULE_GYRO, 0x07, gyro_counts[start:start + 3].tolist())))
    return out


def build_watches(count: int, kinds: Sequence[WatchKind], signal: Signal, seconds: float, seed: int = 0,
                  prefix: str = "w") -> list[VirtualWatch]:
    """`count` watches cycling through `kinds`, each at its own point of the recording and starting at its own
    moment within the first second, so their windows (and decisions) do not all complete at once."""
    rng = random.Random(seed)
    return [VirtualWatch(f"{prefix}{i:02d}-{kinds[i % len(kinds)].protocol}", kinds[i % len(kinds)], signal, seconds,
                         offset_s=rng.uniform(0, signal.period), start_delay_s=rng.uniform(0, 1.0))
            for i in range(count)]


@dataclass
class _Link:
    watch: VirtualWatch
    source: NotificationSource
    pos: int = 0
    down_until: float | None = None  # monotonic; notifications due before it are lost
    garbage: deque[bytes] = field(default_factory=deque)
    lost: int = 0


class Player:
    """Delivers every watch's notifications in real time; `arrived` is the moment each fell due, so a late
    event loop shows up in the agent's latency, not as a kinder clock."""

    GARBAGE_PER_NOTIFICATION = 4  # injected garbage goes out in small bursts between real notifications

    def __init__(self, watches: Sequence[VirtualWatch], sources: Sequence[NotificationSource]) -> None:
        self.links = [_Link(w, s) for w, s in zip(watches, sources, strict=True)]
        self.by_id = {link.watch.watch_id: link for link in self.links}
        self.start: float | None = None
        self.lateness = Histogram()  # how far each delivery ran behind its due time
        self._wake = asyncio.Event()

    def link(self, watch_id: str) -> _Link:
        try:
            return self.by_id[watch_id]
        except KeyError:
            raise WatchSpecError(f"no virtual watch {watch_id!r} (have {', '.join(self.by_id)})") from None

    def inject_garbage(self, watch_id: str, count: int, kind: str = "short", seed: int = 0) -> None:
        """`short`: 1-9 random bytes, a frame cut off by the link (one decode error kind per protocol);
        `random`: up to 200 random bytes."""
        rng = random.Random(seed)
        longest = 9 if kind == "short" else 200
        self.link(watch_id).garbage.extend(rng.randbytes(rng.randint(1, longest)) for _ in range(count))

    def drop_link(self, watch_id: str, seconds: float) -> None:
        link = self.link(watch_id)
        link.down_until = time.monotonic() + seconds
        link.source.link_lost(f"link lost (virtual watch, {seconds:g} s)")

    async def run(self) -> None:
        """Connect every watch, play all notifications, then close the sources."""
        self.start = time.monotonic()
        heap: list[tuple[float, int]] = []
        for i, link in enumerate(self.links):
            link.watch.connect(link.source)
            if link.watch.notifications:
                heapq.heappush(heap, (self._due(link, 0), i))
        try:
            while heap:
                due, i = heap[0]
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                heapq.heappop(heap)
                link = self.links[i]
                self._deliver(link, due)
                link.pos += 1
                if link.pos < len(link.watch.notifications):
                    heapq.heappush(heap, (self._due(link, link.pos), i))
        finally:
            for link in self.links:
                link.source.close()

    def _due(self, link: _Link, pos: int) -> float:
        assert self.start is not None
        return self.start + link.watch.start_delay_s + link.watch.notifications[pos].due

    def _deliver(self, link: _Link, due: float) -> None:
        now = time.monotonic()
        if link.down_until is not None:
            if due < link.down_until:
                link.lost += 1
                return
            link.down_until = None
            link.source.link_restored()
            link.watch.connect(link.source)
        note = link.watch.notifications[link.pos]
        for _ in range(min(self.GARBAGE_PER_NOTIFICATION, len(link.garbage))):
            link.source.on_notification(note.char_uuid, link.garbage.popleft(), arrived=due)
        link.source.on_notification(note.char_uuid, note.data, arrived=due)
        self.lateness.add(now - due)
