"""Where samples come from: a recorded session (`replay:FILE`), the bundled `demo`, or a BLE watch."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from l2mu.agent.recording import SensorSample, read_recording, sensors_in

MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class SourceError(RuntimeError):
    pass


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

    def __post_init__(self) -> None:
        if self.speed < 0:
            raise SourceError(f"--speed must be ≥ 0, got {self.speed}")
        self.samples = sorted(read_recording(self.path), key=lambda s: s.t)
        self.sensors = sensors_in(self.samples)

    async def stream(self) -> AsyncIterator[SensorSample]:
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
                yield SensorSample(t, s.sensor, s.xyz, s.label) if shift else s
            if not self.loop:
                return
            lap += 1


def parse_source(spec: str, speed: float) -> ReplaySource:
    """`demo`, `replay:FILE` or a BLE address (AA:BB:CC:DD:EE:FF)."""
    if spec == "demo":
        return ReplaySource(demo_recording(), "demo", speed=speed, loop=True)
    if spec.startswith("replay:"):
        path = Path(spec.removeprefix("replay:"))
        return ReplaySource(path, topic_safe(path.name.split(".")[0]), speed=speed)
    if MAC_RE.match(spec):
        raise SourceError(
            f"{spec}: live Bluetooth watches are not supported by this build yet; use 'demo' or 'replay:FILE'"
        )
    raise SourceError(
        f"--watch {spec!r}: expected a Bluetooth address like AA:BB:CC:DD:EE:FF, 'demo' or 'replay:FILE'"
    )
