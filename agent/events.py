"""What a source yields to the agent: samples, gaps and connections, one type each.

A source's `stream()` is an async iterator of `SourceEvent`s:

- `Sample`: one reading of one sensor on the watch's clock, in SI units. It is the firmware
  bridge's `ImuSample`, unchanged from the driver that decoded it (or the recording that held it)
  to the pipeline; `label` is the true activity where a recording knows it.
- `StreamGap`: samples of `sensor` were lost here (link loss, lost notifications, samples shed by
  the intake), so the pipeline restarts its grid instead of interpolating across the hole.
- `WatchConnected`: a live watch (re)connected and streams these sensors with this protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2mu.firmware_bridge.driver import ImuSample as Sample


@dataclass(frozen=True, slots=True)
class StreamGap:
    sensor: str
    reason: str


@dataclass(frozen=True, slots=True)
class WatchConnected:
    sensors: tuple[str, ...]
    protocol: str
    name: str = ""


SourceEvent = Sample | StreamGap | WatchConnected

__all__ = ["Sample", "SourceEvent", "StreamGap", "WatchConnected"]
