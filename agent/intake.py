"""A watch that talks in notifications, as an agent source: one intake for live and simulated watches.

Every watch goes through this module the same way, whether bleak hands over its notifications
(l2mu.agent.ble) or a virtual watch's firmware runs in process (l2mu.agent.sim.link):

- `set_up(link, intake)`: the handshake of `firmware_bridge/driver.py` — notifications on, the
  driver's prepare commands (waiting for each answer where the watch sends one), then its start
  commands. Answers are routed to the waiting command; data goes on to the pipeline.
- `NotificationFeed`: bytes → driver → samples; a frame the driver rejects is dropped and counted
  by reason, and never stops the stream.
- `NotificationSource`: the bounded queue between the notification callback and the agent's task
  for that watch. An agent that cannot keep up sheds samples — counted in `dropped` and reported
  to the pipeline as a gap, so no window is built across them — instead of falling further and
  further behind real time: more than `max_queue` samples waiting drops the oldest one; a sample
  that waited more than `max_age_s` by the time its turn comes is shed.

Every queued sample carries its arrival time (`time.monotonic()` when the notification reached
the intake, or the `arrived` stamp the caller gives), which the source exposes as `arrival`
while the agent handles that sample; the load benchmark measures sample → broker latency from it.

Everything here runs on the event loop's thread: that is where bleak delivers notifications.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from l2mu.agent.errors import SourceError, UsageError
from l2mu.agent.events import Sample, StreamGap
from l2mu.agent.settings import DEFAULTS
from l2mu.firmware_bridge.driver import DecodeError, GattWrite, WatchDriver

log = logging.getLogger(__name__)

YIELD_EVERY = 32  # samples the consumer handles before letting other watches' tasks run
_LINK_DOWN = object()  # queued by connection_ended(): what came before it is still handed over


@dataclass
class NotificationFeed:
    driver: WatchDriver
    deliver: Callable[[Sample], object]
    watch_id: str = "watch"
    # Called with each declared sensor when the driver saw lost packets (sequence numbers),
    # so the pipeline restarts its grid instead of interpolating across the hole.
    on_gap: Callable[[str], object] | None = None
    notifications: int = 0
    samples: int = 0
    decode_errors: Counter = field(default_factory=Counter)
    _gaps_seen: int = 0

    def on_notification(self, char_uuid: str, data: bytes | bytearray, received_at: float) -> int:
        """Decode one notification and deliver its samples; returns how many were delivered."""
        self.notifications += 1
        try:
            decoded = self.driver.decode(char_uuid, bytes(data), received_at)
        except DecodeError as exc:
            self.decode_errors[exc.reason] += 1
            if self.decode_errors[exc.reason] == 1:  # once per kind, so a noisy link can't flood the log
                log.warning("%s: dropped a %s frame (%s); further ones are only counted",
                            self.watch_id, self.driver.name, exc)
            return 0
        gaps = getattr(self.driver, "gaps", 0)
        if gaps < self._gaps_seen:  # the driver was reset for a new connection and counts from zero again
            self._gaps_seen = 0
        if gaps > self._gaps_seen:
            self._gaps_seen = gaps
            if self.on_gap:
                for sensor in self.driver.sensors:
                    self.on_gap(sensor)
        for s in decoded:
            self.deliver(s)
        self.samples += len(decoded)
        return len(decoded)

    @property
    def errors_total(self) -> int:
        return sum(self.decode_errors.values())


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
        self._errors_before = 0  # decode errors of feeds replaced by `attach`
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
        self._awaiting: asyncio.Future | None = None  # a set-up command waiting for the watch's answer

    def attach(self, driver: WatchDriver) -> None:
        """A new connection chose `driver` (a live watch may turn out to be another family after a reconnect)."""
        if driver is not self.driver:
            self._errors_before += self.feed.errors_total  # the new feed counts from zero
            self.driver = driver
            self.feed = NotificationFeed(driver, self._deliver, self.watch_id, on_gap=self._sequence_gap)

    @property
    def sensors(self) -> set[str]:
        return set(self.driver.sensors)

    @property
    def decode_errors(self) -> int:
        """Frames the decoders rejected since this intake was made, over every connection and driver."""
        return self._errors_before + self.feed.errors_total

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
        received_at = time.time() if received_at is None else received_at
        waiting = self._awaiting
        if waiting is not None and not waiting.done() and char_uuid in self.driver.response_uuids:
            try:
                samples = self.driver.decode(char_uuid, bytes(data), received_at)
            except DecodeError as exc:
                waiting.set_result(exc)
                return 0
            if not samples:  # an answer; data on a shared characteristic goes on to the pipeline
                waiting.set_result(None)
                return 0
            for s in samples:
                self._deliver(s)
            return len(samples)
        return self.feed.on_notification(char_uuid, data, received_at)

    def expect_answer(self) -> asyncio.Future:
        """Arm before writing a set-up command: the watch's answer (None, or its DecodeError) resolves it."""
        self._awaiting = asyncio.get_running_loop().create_future()
        return self._awaiting

    def answered(self) -> None:
        self._awaiting = None

    def begin_connection(self) -> None:
        """A new connection starts: an end-of-link mark left by an attempt that failed during its set-up is void."""
        if any(item is _LINK_DOWN for _, item in self._queue):
            self._queue = deque(entry for entry in self._queue if entry[1] is not _LINK_DOWN)

    def connection_ended(self) -> None:
        """The link is gone (BLE): `connection()` returns once what arrived before is handed over."""
        self._queue.append((time.monotonic(), _LINK_DOWN))
        self._wake.set()

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
        """Samples and gaps until `close()`, across link losses (the simulated watches' player reconnects)."""
        while not self._closed or self._queue:
            async for item in self.connection():
                yield item

    async def connection(self) -> AsyncIterator[Sample | StreamGap]:
        """Samples and gaps until the link is gone (`connection_ended`) or the intake is closed."""
        handled = 0
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            arrived, item = self._queue.popleft()
            if item is _LINK_DOWN:
                return
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


# --- the set-up every watch goes through -------------------------------------------------------------------


class SetupError(SourceError):
    """The watch cannot be used over this connection; `permanent`: no retry can help (not such a watch)."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


Notify = Callable[[str, bytes | bytearray, float | None, float | None], None]  # uuid, data, received_at, arrived


class GattLink(Protocol):
    """One open connection to a watch, as the set-up needs it: bleak's client (l2mu.agent.ble) or a virtual
    watch's firmware in process (l2mu.agent.sim.link)."""

    def has_characteristic(self, char_uuid: str) -> bool: ...

    async def start_notify(self, char_uuid: str, callback: Notify) -> None: ...

    async def write(self, char_uuid: str, data: bytes, response: bool) -> None: ...


# Answers to a start command meaning the stream is already on (Polar PMD), which is what was wanted.
ALREADY_STREAMING = frozenset({"ERROR_ALREADY_IN_STATE"})


async def set_up(link: GattLink, intake: NotificationSource, name: str, response_timeout_s: float,
                 label: str | None = None) -> None:
    """Notifications on, then the driver's prepare and start commands, each answer awaited where the watch
    sends one; afterwards every notification flows into `intake`. Raises SetupError."""
    driver = intake.driver
    label = label or intake.watch_id

    def on_notification(char_uuid: str, data: bytes | bytearray, received_at: float | None,
                        arrived: float | None) -> None:
        intake.on_notification(char_uuid, data, received_at, arrived)

    for uuid in driver.notify_uuids:
        if not link.has_characteristic(uuid):
            raise SetupError(f"{label} ({name}) has the {driver.name} service but not its characteristic {uuid}",
                             permanent=True)
        await link.start_notify(uuid, on_notification)
    for write in driver.prepare_commands():
        await _command(link, intake, write, bool(driver.response_uuids), True, response_timeout_s, label)
    if not driver.sensors:
        raise SetupError(f"{label} ({name}) streams none of the sensors {driver.name} knows", permanent=True)
    for write in driver.start_commands():
        await _command(link, intake, write, driver.expects_responses, False, response_timeout_s, label)
    log.info("%s (%s): streaming %s over %s at %g Hz", label, name, "+".join(driver.sensors), driver.name,
             driver.native_rate_hz)


async def _command(link: GattLink, intake: NotificationSource, write: GattWrite, wait: bool, prepare: bool,
                   timeout_s: float, label: str) -> None:
    driver = intake.driver
    answer = intake.expect_answer() if wait else None  # armed before writing: the answer may beat the write
    try:
        await link.write(write.char_uuid, write.data, driver.write_with_response)
        if answer is None:
            return
        try:
            result = await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            if driver.expects_responses:
                raise SetupError(f"{label}: no answer to command {write.data.hex()} within {timeout_s:g} s",
                                 permanent=False) from None
            log.warning("%s: no answer to %s within %g s; going on with defaults", label, write.data.hex(), timeout_s)
            return
    finally:
        if wait:
            intake.answered()
    if isinstance(result, DecodeError):
        if prepare:  # e.g. "no gyroscope here": the driver has learned it from the answer
            log.info("%s: the watch declined %s (%s)", label, write.data.hex(), result)
        elif result.status not in ALREADY_STREAMING:
            raise SetupError(f"{label}: the watch refused to start streaming ({result})", permanent=False)
