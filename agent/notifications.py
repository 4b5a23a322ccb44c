"""Watch notification bytes → driver → samples for the pipeline, with bad frames counted.

The runner (BLE, or a virtual watch) hands every notification here. A frame the driver
rejects is dropped and counted by reason; it never stops the stream and never reaches
the pipeline.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from l2mu.agent.events import Sample
from l2mu.firmware_bridge.driver import DecodeError, WatchDriver

log = logging.getLogger(__name__)


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
