"""Where samples come from: a recorded session (`replay:FILE`), the bundled `demo`, or a BLE watch.

Every source is a `Source`: the agent reads nothing else of it. Its `stream()` yields the
events of l2mu.agent.events: samples, and from a live watch also `WatchConnected` (after each
connection: the sensors it streams) and `StreamGap` (samples were lost, e.g. the link dropped:
no window may span this point).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from l2mu.agent.errors import SourceError
from l2mu.agent.events import Sample, SourceEvent
from l2mu.agent.recording import read_recording, sensors_in

if TYPE_CHECKING:
    from l2mu.agent.ble import BleOptions

MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")
# What someone meant as an address: hex pairs and separators, but not the six pairs an address has.
ADDRESS_LIKE_RE = re.compile(r"^[0-9A-Fa-f]{1,2}([:-][0-9A-Fa-f]{0,2})+$")


class Source(Protocol):
    watch_id: str
    speed: float  # how much faster than real time its clock runs (0: unpaced); maps window times to wall time
    sensors: set[str]
    sensors_known: bool  # False until a live watch has said what it streams (WatchConnected)
    connecting: bool  # looking for the watch or reconnecting on its own retry budget: silent, not stalled

    def stream(self) -> AsyncIterator[SourceEvent]: ...


def demo_recording() -> Path:
    return Path(str(resources.files("l2mu.agent") / "demo" / "demo.csv.gz"))


def topic_safe(name: str) -> str:
    """MQTT topic level from a free-form name: no wildcards, separators or spaces."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("_") or "watch"


@dataclass
class ReplaySource:
    """Samples of a recording, paced on its own clock divided by `speed` (0 = as fast as possible)."""

    path: Path
    watch_id: str
    speed: float = 1.0
    loop: bool = False
    sensors_known = True
    connecting = False

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise SourceError(f"--speed must be ≥ 0, got {self.speed}")
        self.samples = sorted(read_recording(self.path), key=lambda s: s.t)
        self.sensors = sensors_in(self.samples)

    async def stream(self) -> AsyncIterator[Sample]:
        span = self.samples[-1].t - self.samples[0].t
        period = span + (self.samples[1].t - self.samples[0].t if len(self.samples) > 1 else 0.05)
        t0 = self.samples[0].t
        wall0 = time.monotonic()
        lap = 0
        while True:
            shift = lap * period  # each lap continues the clock, so the pipeline sees no time reversal
            for s in self.samples:
                t = s.t + shift
                if self.speed > 0:
                    delay = wall0 + (t - t0) / self.speed - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                elif lap == 0 and s is self.samples[0]:
                    await asyncio.sleep(0)
                yield Sample(t, s.sensor, s.xyz, s.label) if shift else s
            if not self.loop:
                return
            lap += 1


def parse_source(spec: str, speed: float, protocol: str = "auto", ble: BleOptions | None = None) -> Source:
    """`demo`, `replay:FILE` or a BLE address (AA:BB:CC:DD:EE:FF) spoken to with `protocol`."""
    if spec == "demo":
        return ReplaySource(demo_recording(), "demo", speed=speed, loop=True)
    if spec.startswith("replay:"):
        path = Path(spec.removeprefix("replay:"))
        return ReplaySource(path, topic_safe(path.name.split(".")[0]), speed=speed)
    if MAC_RE.match(spec):
        from l2mu.agent.ble import BleSource  # bleak only where a live watch is asked for

        return BleSource(spec, protocol, ble)
    if ADDRESS_LIKE_RE.match(spec):
        raise SourceError(f"--watch {spec!r}: malformed address; expected a Bluetooth address like "
                          f"AA:BB:CC:DD:EE:FF (six pairs of hex digits)")
    raise SourceError(
        f"--watch {spec!r}: expected a Bluetooth address like AA:BB:CC:DD:EE:FF, 'demo' or 'replay:FILE'"
    )


def parse_sources(specs: list[str], speed: float, protocols: list[str] | None = None,
                  ble: BleOptions | None = None) -> list[Source]:
    """Every --watch; `protocols` is one --protocol for all Bluetooth watches or one per address, in order."""
    addresses = [s for s in specs if MAC_RE.match(s)]
    protocols = protocols or ["auto"]
    if len(protocols) == 1:
        protocols = protocols * len(addresses)
    elif len(protocols) != len(addresses):
        raise SourceError(f"--protocol given {len(protocols)} times for {len(addresses)} Bluetooth watch(es): give "
                          f"it once for all of them or once per address, in the order of the --watch options")
    chosen = iter(protocols)
    return [parse_source(s, speed, next(chosen) if MAC_RE.match(s) else "auto", ble) for s in specs]
