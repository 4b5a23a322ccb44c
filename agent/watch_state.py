"""Each watch's connection state, for <prefix>/watch/<watch>/state (docs/watch-state.schema.json).

A source that knows its own connection (l2mu.agent.ble.BleSource) owns a `WatchStatus` and moves it
through `searching` → `connecting` → `streaming`, and `reconnecting` after a loss; the agent's
`WatchStateBoard` follows every watch (making a `WatchStatus` for sources without one: recordings,
the demo, test stand-ins, which count as streaming from their first sample), counts the samples each
delivers (`rate_hz`) and publishes a watch's state on every change of `state`, `reason` or `battery`,
and at least every `state_interval` seconds otherwise. A watch whose stream ended for good is
`stopped`, with the error (or `ended`) as its reason.

RSSI and dropped frames change too often to be worth a message each: they are read when a message
goes out (`WatchStatus.readings`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from l2mu.agent.events import Sample, StreamGap, WatchConnected
from l2mu.agent.settings import DEFAULTS

log = logging.getLogger(__name__)

STATES = ("searching", "connecting", "streaming", "reconnecting", "stopped")
RATE_WINDOW_S = 5.0  # rate_hz is the samples of about the last 5 s: steady, yet quick to show a stall


class WatchStatus:
    """One watch's state as its source sees it; listeners hear every change worth a message."""

    def __init__(self, watch_id: str, state: str = "searching") -> None:
        self.watch_id = watch_id
        self.state = state
        self.since = time.time()
        self.reason: str | None = None
        self.battery: int | None = None
        # () -> {"rssi": …, "dropped_frames": …}: read when a message goes out (a live watch's BlueZ properties).
        self.readings: Callable[[], dict[str, Any]] | None = None
        self._listeners: list[Callable[[WatchStatus], object]] = []

    def listen(self, listener: Callable[[WatchStatus], object]) -> None:
        self._listeners.append(listener)

    def set(self, state: str, reason: str | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"not a watch state: {state!r}")  # a bug, never the user's
        if (state, reason) == (self.state, self.reason):
            return
        if state != self.state:
            self.since = time.time()
        self.state, self.reason = state, reason
        self._changed()

    def set_battery(self, level: int | None) -> None:
        level = None if level is None else max(0, min(100, int(level)))
        if level != self.battery:
            self.battery = level
            self._changed()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener(self)


class WatchStateBoard:
    """Every watch's state, published through `publish(watch_id, payload)` on change and every `interval_s`."""

    def __init__(self, publish: Callable[[str, dict], object], interval_s: float = DEFAULTS.state_interval) -> None:
        if not interval_s > 0:
            raise ValueError("state interval must be > 0")
        self.publish = publish
        self.interval_s = interval_s
        self.statuses: dict[str, WatchStatus] = {}
        self._own: set[str] = set()  # watches whose source keeps its own status
        self._samples: dict[str, int] = {}
        self._history: dict[str, deque[tuple[float, int]]] = {}  # (monotonic, samples so far), about every second
        self._published_at: dict[str, float] = {}

    def track(self, source: Any) -> WatchStatus:
        watch_id = source.watch_id
        status = getattr(source, "status", None)
        if isinstance(status, WatchStatus):
            self._own.add(watch_id)
        else:
            status = WatchStatus(watch_id, "connecting")
        self.statuses[watch_id] = status
        self._samples[watch_id] = 0
        self._history[watch_id] = deque([(time.monotonic(), 0)])
        status.listen(lambda s: self.send(s.watch_id))
        return status

    def saw(self, watch_id: str, event: object) -> None:
        """One event of a watch's stream (called for every sample: keep it cheap)."""
        if isinstance(event, Sample):
            self._samples[watch_id] += 1
            if watch_id not in self._own and self.statuses[watch_id].state != "streaming":
                self.statuses[watch_id].set("streaming")
        elif isinstance(event, WatchConnected) and watch_id not in self._own:
            self.statuses[watch_id].set("streaming")
        elif isinstance(event, StreamGap) and watch_id not in self._own and event.reason == "link lost":
            self.statuses[watch_id].set("reconnecting", event.reason)

    def ended(self, watch_id: str, error: BaseException | None) -> None:
        """The watch's stream is over for good."""
        if watch_id in self.statuses:
            self.statuses[watch_id].set("stopped", " ".join(str(error).split()) if error else "ended")

    def rate_hz(self, watch_id: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        history = self._history[watch_id]
        t0, n0 = history[0]
        if now - t0 <= 0:
            return 0.0
        return round((self._samples[watch_id] - n0) / (now - t0), 2)

    def payload(self, watch_id: str) -> dict:
        status = self.statuses[watch_id]
        readings = status.readings() if status.readings is not None else {}
        return {
            "watch": watch_id,
            "state": status.state,
            "since": round(status.since, 3),
            "reason": status.reason,
            "battery": status.battery,
            "rssi": readings.get("rssi"),
            "rate_hz": self.rate_hz(watch_id),
            "dropped_frames": int(readings.get("dropped_frames", 0)),
            "time": round(time.time(), 3),
        }

    def send(self, watch_id: str) -> None:
        self._published_at[watch_id] = time.monotonic()
        try:
            self.publish(watch_id, self.payload(watch_id))
        except Exception as exc:  # a state message must never stop the watch it describes
            log.warning("could not publish the state of %s: %s", watch_id, exc)

    def tick(self, now: float | None = None) -> None:
        """Once a second: move the rate window on, and publish what was quiet for `interval_s`."""
        now = time.monotonic() if now is None else now
        for watch_id, history in self._history.items():
            history.append((now, self._samples[watch_id]))
            while len(history) > 1 and now - history[0][0] > RATE_WINDOW_S:
                history.popleft()
            if now - self._published_at.get(watch_id, float("-inf")) >= self.interval_s:
                self.send(watch_id)

    async def run(self) -> None:
        for watch_id in self.statuses:
            self.send(watch_id)
        while True:
            await asyncio.sleep(min(1.0, self.interval_s))
            self.tick()
