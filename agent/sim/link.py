"""A virtual watch connected in process: the same firmware model the virtual BlueZ serves over D-Bus, without the bus.

`InProcessLink` is both sides of one connection: to the watch's firmware (l2mu.agent.sim.watches) it is the
`Link` it notifies through, to the agent it is the `GattLink` the intake's set-up drives
(l2mu.agent.intake.set_up) — the same handshake, response routing and bounded queue a live watch over bleak
goes through. Only the radio and D-Bus are left out, so the load bench counts the agent's own work.

Each notification is stamped with the moment its block fell due on the watch's clock (`arrived`, and as
`received_at` for drivers that time samples on arrival), so a late event loop shows in the latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from l2mu.agent.intake import Notify
from l2mu.agent.sim.watches import VirtualWatch


class InProcessLink:
    def __init__(self, watch: VirtualWatch, on_late: Callable[[float], None] | None = None) -> None:
        """on_late(seconds): how far behind its due time each sampled block was handed over."""
        self.watch = watch
        self.on_late = on_late
        self.is_open = True
        self._callbacks: dict[str, Notify] = {}
        self._characteristics = {c.uuid.lower() for s in watch.services() for c in s.characteristics}
        watch.on_connect(self)  # type: ignore[arg-type]  # the firmware's Link: notify() and disconnect()

    # --- the agent's side (GattLink) -------------------------------------------------------------------

    def has_characteristic(self, char_uuid: str) -> bool:
        return char_uuid.lower() in self._characteristics

    async def start_notify(self, char_uuid: str, callback: Notify) -> None:
        self._callbacks[char_uuid.lower()] = callback
        self.watch.on_notify_enabled(char_uuid.lower(), True)

    async def write(self, char_uuid: str, data: bytes, response: bool) -> None:
        if self.is_open:
            self.watch.on_write(char_uuid.lower(), bytes(data), response)

    # --- the firmware's side (Link) --------------------------------------------------------------------

    def notify(self, char_uuid: str, data: bytes) -> bool:
        callback = self._callbacks.get(char_uuid.lower())
        if not self.is_open or callback is None:
            return False
        clock, due = self.watch.clock, self.watch.due_t
        if due is None:  # an answer to a command, not a sampled block: it arrives now
            callback(char_uuid.lower(), data, None, None)
        else:
            arrived = clock.monotonic_at(due)
            callback(char_uuid.lower(), data, clock.unix0 + due, arrived)
            if self.on_late is not None:
                self.on_late(time.monotonic() - arrived)
        return True

    def disconnect(self) -> None:
        """The link drops: the firmware stops its streams and forgets the connection, its clock runs on."""
        if self.is_open:
            self.is_open = False
            self._callbacks.clear()
            self.watch.on_disconnect()
