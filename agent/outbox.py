"""Decisions waiting for the broker's PUBACK: bounded in memory, optionally journaled on disk.

paho keeps unacknowledged QoS 1 messages in memory and resends them after a reconnect, but a
restart of the agent loses them. The outbox holds every decision until the broker acknowledged
it; with a directory it survives restarts.

On-disk format: `outbox.jsonl`, append-only JSON lines, `{"id": N, "topic": …, "payload": …,
"retain": …}` when a message is queued and `{"ack": N}` once the broker acknowledged it (or it
was dropped). Loading replays the journal: queued minus acknowledged, in id order. After
ROTATE_AFTER acknowledgements the journal is rewritten with only what is still pending, to a
temporary file that atomically replaces it, so a crash at any point leaves a valid journal
(at worst one that redelivers a message: subscribers tell duplicates by `seq`). A torn last
line from a crash mid-write is skipped.

A disk that refuses writes (full, quota, read-only) never costs a decision: the outbox logs one
line and keeps queueing in memory; every RETRY_DISK_S it tries to write the whole queue to a fresh
journal (as a rotation does; once everything was delivered it first empties the old journal, which
frees the space), and says so when that works again. Meanwhile a crash loses what is only in memory.

Not thread-safe: one thread (the publisher's sender) owns it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from l2mu.agent.errors import OutboxError
from l2mu.agent.settings import DEFAULTS

log = logging.getLogger(__name__)

JOURNAL = "outbox.jsonl"
ROTATE_AFTER = 1000
RETRY_DISK_S = 5.0  # how often a journal that could not be written is tried again


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    topic: str
    payload: str
    retain: bool


class Outbox:
    def __init__(self, directory: Path | None = None, max_messages: int = DEFAULTS.queue_size) -> None:
        if max_messages < 1:
            raise OutboxError(f"outbox size must be ≥ 1, got {max_messages}")
        self.max_messages = max_messages
        self.pending: deque[Entry] = deque()  # not yet handed to the MQTT client, oldest first
        self.unacked: dict[int, Entry] = {}  # handed to the client, waiting for the PUBACK
        self.dropped = 0
        self._next_id = 0
        self._acks_since_rotate = 0
        self._dir = Path(directory) if directory else None
        self._journal: IO[str] | None = None
        self._lock: IO[str] | None = None
        self.disk_error: str | None = None  # why the journal cannot be written now; None while it can
        self._disk_retry_at = 0.0
        if self._dir is not None:
            self._open_dir()

    @property
    def persistent(self) -> bool:
        return self._dir is not None

    def __len__(self) -> int:
        return len(self.pending) + len(self.unacked)

    def _open_dir(self) -> None:
        assert self._dir is not None
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._lock = open(self._dir / "lock", "w")  # noqa: SIM115 - held for the outbox's lifetime
        except OSError as exc:
            raise OutboxError(f"--queue-dir {self._dir}: cannot use it ({exc})") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise OutboxError(f"--queue-dir {self._dir}: another agent is using it") from None
        entries = self._load(self._dir / JOURNAL)
        self.pending.extend(entries)
        self._next_id = max((e.id for e in entries), default=-1) + 1
        if entries:
            log.info("outbox %s: %d messages from before the restart are queued for delivery", self._dir, len(entries))
        try:
            self._rotate()  # start from a compact journal
        except OSError as exc:
            self._disk_failed(exc)

    @staticmethod
    def _load(path: Path) -> list[Entry]:
        if not path.exists():
            return []
        queued: dict[int, Entry] = {}
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                try:
                    rec = json.loads(line)
                    if "ack" in rec:
                        queued.pop(int(rec["ack"]), None)
                    else:
                        entry = Entry(int(rec["id"]), rec["topic"], rec["payload"], bool(rec["retain"]))
                        queued[entry.id] = entry
                except (ValueError, KeyError, TypeError):
                    log.warning("outbox %s:%d: skipped an unreadable line (cut short by a crash?)", path, lineno)
        return [queued[i] for i in sorted(queued)]

    def _write(self, rec: dict, sync: bool) -> None:
        if self._journal is None:
            return
        try:
            self._journal.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self._journal.flush()
            if sync:
                os.fsync(self._journal.fileno())
        except OSError as exc:
            self._disk_failed(exc)

    def _disk_failed(self, exc: OSError) -> None:
        self.disk_error = exc.strerror or str(exc)
        self._disk_retry_at = time.monotonic() + RETRY_DISK_S
        log.error("outbox %s: cannot write the queue to disk (%s); keeping decisions in memory until it can",
                  self._dir, self.disk_error)
        if self._journal is not None:
            with contextlib.suppress(OSError):  # its buffer holds the line that did not fit
                self._journal.close()
            self._journal = None

    def _retry_disk(self) -> None:
        if self.disk_error is None or time.monotonic() < self._disk_retry_at:
            return
        assert self._dir is not None
        self._disk_retry_at = time.monotonic() + RETRY_DISK_S
        try:
            if len(self) == 0:
                # Everything the old journal holds was delivered: emptying it is safe and frees what a rewrite needs.
                os.truncate(self._dir / JOURNAL, 0)
            self._rotate()
        except OSError:
            with contextlib.suppress(OSError):
                (self._dir / (JOURNAL + ".tmp")).unlink()
            return
        log.info("outbox %s: writing the queue to disk again (%d decisions in it)", self._dir, len(self))
        self.disk_error = None

    def _rotate(self) -> None:
        assert self._dir is not None
        path, tmp = self._dir / JOURNAL, self._dir / (JOURNAL + ".tmp")
        if self._journal is not None:
            self._journal.close()
        with open(tmp, "w", encoding="utf-8") as fh:
            for e in sorted([*self.unacked.values(), *self.pending], key=lambda e: e.id):
                fh.write(json.dumps({"id": e.id, "topic": e.topic, "payload": e.payload, "retain": e.retain},
                                    separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename is durable once the directory is synced
            dfd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._journal = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        self._acks_since_rotate = 0

    def put(self, topic: str, payload: str, retain: bool) -> Entry:
        self._retry_disk()
        if len(self) >= self.max_messages and self.pending:
            # Full: the oldest decision not yet handed to the client goes (the newest state matters most).
            old = self.pending.popleft()
            self.dropped += 1
            self._write({"ack": old.id}, sync=False)
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("outbox full (%d messages): dropped %d oldest decisions so far", self.max_messages,
                            self.dropped)
        entry = Entry(self._next_id, topic, payload, retain)
        self._next_id += 1
        # fsync: "queued" must mean "survives a crash"; at one decision a second per watch it is cheap.
        self._write({"id": entry.id, "topic": topic, "payload": payload, "retain": retain}, sync=True)
        self.pending.append(entry)
        return entry

    def take(self, n: int) -> list[Entry]:
        """Up to n oldest pending entries, now counted as handed to the client."""
        out = []
        while self.pending and len(out) < n:
            e = self.pending.popleft()
            self.unacked[e.id] = e
            out.append(e)
        return out

    def ack(self, entry_id: int) -> None:
        if self.unacked.pop(entry_id, None) is None:
            return
        self._retry_disk()
        # A lost ack record only means one redelivery after a restart, so no fsync here.
        self._write({"ack": entry_id}, sync=False)
        self._acks_since_rotate += 1
        if self._journal is not None and self._acks_since_rotate >= ROTATE_AFTER:
            try:
                self._rotate()
            except OSError as exc:
                self._disk_failed(exc)

    def close(self) -> None:
        if self._journal is not None:
            with contextlib.suppress(OSError):
                self._journal.close()
            self._journal = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
