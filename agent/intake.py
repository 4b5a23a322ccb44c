"""A watch that talks in notifications, as an agent source: bounded, time-stamped intake with counted drops.

The notification callback (bleak's, or a virtual watch's) only decodes and queues; the agent's
per-watch task takes samples from the queue and runs the pipeline. Between the two sits a
bound, so an agent that cannot keep up sheds samples — counted in `dropped` and reported to
the pipeline as a gap, so no window is built across them — instead of falling further and
further behind real time:

- overflow: more than `max_queue` samples waiting drops the oldest one;
- staleness: a sample that waited more than `max_age_s` by the time its turn comes is shed.

Every queued sample carries its arrival time (`time.monotonic()` when the notification reached
the intake, or the `arrived` stamp the caller gives), which the source exposes as `arrival`
while the agent handles that sample; the load benchmark measures sample → broker latency from it.

Everything here runs on the event loop's thread: that is where bleak delivers notifications.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator

from l2mu.agent.errors import UsageError
from l2mu.agent.events import Sample, StreamGap
from l2mu.agent.notifications import NotificationFeed
from l2mu.agent.settings import DEFAULTS
from l2mu.firmware_bridge.driver import WatchDriver

log = logging.getLogger(__name__)

YIELD_EVERY = 32  # samples the consumer handles before letting other watches' tasks run


class NotificationSource:
    """One watch's notifications → driver → bounded queue → `stream()` of samples and StreamGaps."""

    speed = 1.0  # live: the watch's clock runs at wall speed (the agent maps window times with it)
    sensors_known = True  # the driver was configured before streaming (sources.Source)
    connecting = False

    def __init__(self, watch_id: str, driver: WatchDriver, max_queue: int = DEFAULTS.intake_queue,
                 max_age_s: float = DEFAULTS.intake_max_age_s) -> None:
        if max_queue < 1 or max_age_s <= 0:
            raise UsageError("an intake needs max_queue ≥ 1 and max_age_s > 0")
        self.watch_id = watch_id
        self.driver = driver
        self.max_queue = max_queue
        self.max_age_s = max_age_s
        self.feed = NotificationFeed(driver, self._deliver, watch_id, on_gap=self._sequence_gap)
        self.dropped_overflow = 0
        self.dropped_stale = 0
        self.link_drops = 0
        self.arrival = 0.0  # arrival time (monotonic) of the sample the agent is handling now
        self._queue: deque[tuple[float, Sample | StreamGap]] = deque()
        self._samples_queued = 0  # samples (not gap markers) in _queue
        self._head_gap: str | None = None  # samples were shed ahead of the queue's head: report a gap first
        self._now = 0.0  # arrival stamp of the notification being decoded
        self._wake = asyncio.Event()
        self._closed = False
        self._link_lost_at: float | None = None

    @property
    def sensors(self) -> set[str]:
        return set(self.driver.sensors)

    @property
    def dropped(self) -> int:
        return self.dropped_overflow + self.dropped_stale

    @property
    def queued(self) -> int:
        return self._samples_queued

    # --- producer side: the notification callback ------------------------------------------------

    def on_notification(self, char_uuid: str, data: bytes | bytearray, received_at: float | None = None,
                        arrived: float | None = None) -> int:
        """Hand over one notification. `received_at`: wall-clock seconds for drivers that stamp samples on
        arrival (default: now); `arrived`: monotonic arrival time for latency accounting (default: now)."""
        self._now = time.monotonic() if arrived is None else arrived
        return self.feed.on_notification(char_uuid, data, time.time() if received_at is None else received_at)

    def _deliver(self, sample: Sample) -> None:
        if self._closed:
            return
        if self._samples_queued >= self.max_queue:
            self._shed_oldest()
        self._queue.append((self._now, sample))
        self._samples_queued += 1
        self._wake.set()

    def _shed_oldest(self) -> None:
        while self._queue:
            _, item = self._queue.popleft()
            if isinstance(item, Sample):
                self._samples_queued -= 1
                self.dropped_overflow += 1
                self._note_drop(item.sensor, "overflow")
                return

    def _sequence_gap(self, sensor: str) -> None:
        self._queue.append((self._now, StreamGap(sensor, "lost notifications")))
        self._wake.set()

    def link_lost(self, reason: str = "link dropped") -> None:
        """The watch disconnected: one log line, and the stream restarts from scratch on `link_restored`."""
        self.link_drops += 1
        self._link_lost_at = time.monotonic()
        log.warning("%s: %s; the other watches go on, this one resumes when it reconnects", self.watch_id, reason)
        for sensor in self.driver.sensors:
            self._queue.append((self._link_lost_at, StreamGap(sensor, reason)))
        self._wake.set()

    def link_restored(self) -> None:
        """Reconnected: the driver forgets the old connection's sequence numbers and clocks."""
        self.driver.reset()
        if self._link_lost_at is not None:
            log.info("%s: reconnected after %.1f s", self.watch_id, time.monotonic() - self._link_lost_at)
            self._link_lost_at = None

    def close(self) -> None:
        """No more notifications: `stream()` ends once the queue is empty."""
        self._closed = True
        self._wake.set()

    def _note_drop(self, sensor: str, why: str) -> None:
        if self._head_gap is None:
            self._head_gap = sensor
        if self.dropped == 1:
            log.warning("%s: the agent is not keeping up: shed a sample (%s); further drops are only counted",
                        self.watch_id, why)

    # --- consumer side: the agent's task for this watch -------------------------------------------

    async def stream(self) -> AsyncIterator[Sample | StreamGap]:
        handled = 0
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            arrived, item = self._queue.popleft()
            if isinstance(item, Sample):
                self._samples_queued -= 1
                if time.monotonic() - arrived > self.max_age_s:
                    self.dropped_stale += 1
                    self._note_drop(item.sensor, f"older than {self.max_age_s:g} s")
                    continue
                if self._head_gap is not None:
                    yield StreamGap(self._head_gap, "samples shed")
                    self._head_gap = None
                self.arrival = arrived
            yield item
            handled += 1
            if handled % YIELD_EVERY == 0:
                await asyncio.sleep(0)
