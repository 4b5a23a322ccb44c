"""Simulated watches in process, for the load bench, the fault tests and the fault soak.

Each watch is a firmware model of l2mu.agent.sim.watches — the same one the virtual BlueZ serves over
D-Bus — connected through an `InProcessLink` and set up by the intake's own handshake
(l2mu.agent.intake.set_up) into its own `NotificationSource`: exactly the path of a live watch over
bleak, minus the radio and D-Bus. The firmware streams real recorded motion (each watch from its own
point of the tape) in its protocol's wire format at its native rate, in real time. `Player` connects
every watch, each at its own moment within the first second, and injects faults on request: garbage
frames and link drops (notifications due while the link is down are lost; on reconnect the driver is
reset and the set-up runs again, as after a BLE reconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2mu.agent.errors import UserError
from l2mu.agent.intake import NotificationSource, set_up
from l2mu.agent.settings import DEFAULTS
from l2mu.agent.sim.link import InProcessLink
from l2mu.agent.sim.watches import MotionTape, VirtualWatch, make_watch
from l2mu.firmware_bridge.driver import WatchDriver
from l2mu.firmware_bridge.infinitime import InfiniTimeDriver
from l2mu.firmware_bridge.l2mu_profile import L2muDriver
from l2mu.firmware_bridge.metawear import MetaWearDriver
from l2mu.firmware_bridge.polar_pmd import PmdStreamSettings, PolarPmdDriver

# Protocol @ native rate. Every one of them carries what the default model needs (acc + gyro); the
# acc-only families (Bangle.js, InfiniTime) join the mix for a model that reads the accelerometer only.
DEFAULT_MIX = ("polar@52", "metawear@50", "l2mu@20", "metawear@25", "l2mu@50", "bangle@25", "infinitime@10")
PROTOCOL_SENSORS = {"polar": {"acc", "gyro"}, "metawear": {"acc", "gyro"}, "l2mu": {"acc", "gyro"},
                    "bangle": {"acc"}, "infinitime": {"acc"}}


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
    """The driver the agent uses for this kind, asking the watch for the kind's rate in its set-up."""
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
class SimWatch:
    """One simulated watch: its firmware, the agent's intake for it, the link while connected."""

    watch_id: str
    kind: WatchKind
    firmware: VirtualWatch
    source: NotificationSource
    start_delay_s: float = 0.0
    link: InProcessLink | None = None


def build_watches(count: int, kinds: Sequence[WatchKind], tape: MotionTape, seed: int = 0, prefix: str = "w",
                  max_queue: int = DEFAULTS.intake_queue, max_age_s: float = DEFAULTS.intake_max_age_s,
                  speed: float = 1.0) -> list[SimWatch]:
    """`count` watches cycling through `kinds`, each at its own point of the recording and starting at its own
    moment within the first second, so their windows (and decisions) do not all complete at once."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        watch_id = f"{prefix}{i:02d}-{kind.protocol}"
        firmware = make_watch(kind.protocol, tape, address=f"C0:FF:EE:01:{i // 256:02X}:{i % 256:02X}", speed=speed)
        firmware.offset_s = rng.uniform(0, tape.period)
        source = NotificationSource(watch_id, make_driver(kind), max_queue, max_age_s)
        out.append(SimWatch(watch_id, kind, firmware, source, start_delay_s=rng.uniform(0, 1.0)))
    return out


class Player:
    """Connects every watch and lets them stream for `seconds` (plus the first second's staggered starts),
    then hangs up and closes their intakes."""

    GARBAGE_PER_BURST = 4  # injected garbage goes out in small bursts, between the real notifications
    GARBAGE_EVERY_S = 0.05

    def __init__(self, watches: Sequence[SimWatch], seconds: float,
                 response_timeout_s: float = 5.0) -> None:
        self.watches = list(watches)
        self.by_id = {w.watch_id: w for w in self.watches}
        self.seconds = seconds
        self.response_timeout_s = response_timeout_s
        self.lateness = Histogram()  # how far each block's delivery ran behind its due time
        self._tasks: set[asyncio.Task] = set()

    def watch(self, watch_id: str) -> SimWatch:
        try:
            return self.by_id[watch_id]
        except KeyError:
            raise WatchSpecError(f"no virtual watch {watch_id!r} (have {', '.join(self.by_id)})") from None

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, w: SimWatch) -> None:
        w.link = InProcessLink(w.firmware, on_late=self.lateness.add)
        await set_up(w.link, w.source, w.firmware.name, self.response_timeout_s)

    async def _start(self, w: SimWatch) -> None:
        await asyncio.sleep(w.start_delay_s)
        await self._connect(w)

    async def run(self) -> None:
        for w in self.watches:
            self._spawn(self._start(w))
        try:
            await asyncio.sleep(self.seconds + 1.0)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for w in self.watches:
                if w.link is not None:
                    w.link.disconnect()
                w.source.close()

    def inject_garbage(self, watch_id: str, count: int, kind: str = "short", seed: int = 0) -> None:
        """`short`: 1-9 random bytes, a frame cut off by the link (one decode error kind per protocol);
        `random`: up to 200 random bytes. Sent on the watch's data characteristic, a few at a time."""
        w = self.watch(watch_id)
        rng = random.Random(seed)
        longest = 9 if kind == "short" else 200
        frames = [rng.randbytes(rng.randint(1, longest)) for _ in range(count)]

        async def spray() -> None:
            while frames:
                for frame in frames[: self.GARBAGE_PER_BURST]:
                    if w.link is not None:
                        w.link.notify(w.firmware.data_char, frame)
                del frames[: self.GARBAGE_PER_BURST]
                await asyncio.sleep(self.GARBAGE_EVERY_S)

        self._spawn(spray())

    def drop_link(self, watch_id: str, seconds: float) -> None:
        """The link goes down for `seconds` (the watch's samples meanwhile are lost), then reconnects."""
        w = self.watch(watch_id)
        if w.link is not None:
            w.link.disconnect()
            w.link = None
        w.source.link_lost(f"link lost (virtual watch, {seconds:g} s)")

        async def restore() -> None:
            await asyncio.sleep(seconds)
            w.source.link_restored()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect(w)

        self._spawn(restore())


