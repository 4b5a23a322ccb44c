"""Decisions waiting for the broker's PUBACK: bounded in memory, optionally journaled on disk.

paho keeps unacknowledged QoS 1 messages in memory and resends them after a reconnect, but a
restart of the agent loses them. The outbox holds every decision until the broker acknowledged
it; with a directory it survives restarts.

On-disk format: `outbox.jsonl`, append-only JSON lines, `{"id": N, "topic": …, "payload": …,
"retain": …}` when a message is queued and `{"ack": N}` once the broker acknowledged it (or it
was dropped). Loading replays the journal: queued minus acknowledged, in id order. After
ROTATE_AFTER acknowledgements the journal is rewritten with only what is still pending, to a
temporary file that atomically replaces it, so a crash at any point leaves a valid journal
(at worst one that redelivers a message: subscribers tell duplicates by `seq`).

A journal damaged by a power cut never stops the agent: whatever cannot be read — a torn line, bytes
that are not UTF-8, a block of NUL bytes where the file system lost data, a record of the wrong shape —
is skipped and counted, everything readable is queued, and one WARNING names the file, the count and
where the damaged file is kept (`outbox.jsonl.damaged-<unix time>`, only the latest one) before a clean
journal replaces it. A journal that is not a regular file (a directory, a FIFO) is moved aside the same way.

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
import re
import shutil
import stat
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from l2mu.agent.errors import OutboxError
from l2mu.agent.settings import DEFAULTS

log = logging.getLogger(__name__)

JOURNAL = "outbox.jsonl"
DAMAGED = JOURNAL + ".damaged-"  # + Unix time: the last damaged journal, kept for inspection
ROTATE_AFTER = 1000
RETRY_DISK_S = 5.0  # how often a journal that could not be written is tried again
_NULS = re.compile(rb"(\x00+)")


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    topic: str
    payload: str
    retain: bool


@dataclass
class JournalRead:
    """What `read_journal` found: the messages still queued, and what could not be read."""

    entries: list[Entry] = field(default_factory=list)
    skipped: int = 0  # unreadable records: each damaged stretch of a line counts once (a zeroed block too)
    problem: str | None = None  # why (part of) the file could not be read at all; None when it could

    @property
    def damaged(self) -> bool:
        return self.skipped > 0 or self.problem is not None


def read_journal(path: Path) -> JournalRead:
    """Replay a journal: queued minus acknowledged, in id order, skipping whatever is unreadable.

    Raises OutboxError only when the file may not be read at all (permissions): that needs the user."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer that never comes.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return JournalRead()
    except PermissionError as exc:
        raise OutboxError(f"--queue-dir {path.parent}: cannot read {path.name} ({exc.strerror})") from None
    except OSError as exc:
        return JournalRead(problem=f"it cannot be opened ({exc.strerror or exc})")
    out = JournalRead()
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        out.problem = f"it is {_kind(mode)}, not a regular file"
        return out
    with open(fd, "rb") as fh:
        queued: dict[int, Entry] = {}
        try:
            for line in fh:
                for rec in _records(line, out):
                    if isinstance(rec, Entry):
                        queued[rec.id] = rec
                    else:
                        queued.pop(rec, None)
        except OSError as exc:  # an I/O error part-way: keep what came before it
            out.problem = f"reading it failed part-way ({exc.strerror or exc})"
    out.entries = [queued[i] for i in sorted(queued)]
    return out


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "something else"


def _records(line: bytes, out: JournalRead) -> Iterator[Entry | int]:
    """The records of one journal line (an Entry, or the id an ack record acknowledges). A line torn by a
    crash, or with a zeroed block in it, may still hold a whole record after the block: each stretch
    between NUL runs is tried, and each run of unreadable stretches counts as one skipped record."""
    body = line.rstrip(b"\n")
    bad = False  # the previous stretch of this line was unreadable
    for i, part in enumerate(_NULS.split(body)):
        rec = None if i % 2 else _record(part)  # odd parts are the NUL runs themselves
        if rec is None and (i % 2 or part.strip()):
            if not bad:
                out.skipped += 1
            bad = True
        elif rec is not None:
            bad = False
            yield rec


def _record(raw: bytes) -> Entry | int | None:
    try:
        rec = json.loads(raw.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and json's errors both are
        return None
    if not isinstance(rec, dict):
        return None
    if "ack" in rec:
        ack = rec["ack"]
        return ack if type(ack) is int else None
    i, topic, payload, retain = rec.get("id"), rec.get("topic"), rec.get("payload"), rec.get("retain")
    # Checked here because a bad topic would make the MQTT client raise on the sender thread, much later.
    if (type(i) is not int or not isinstance(topic, str) or not topic or any(c in topic for c in "+#\0")
            or not isinstance(payload, str) or not isinstance(retain, bool)):
        return None
    return Entry(i, topic, payload, retain)


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
        path = self._dir / JOURNAL
        found = read_journal(path)
        entries = found.entries
        self.pending.extend(entries)
        self._next_id = max((e.id for e in entries), default=-1) + 1
        if found.damaged:
            self._set_aside(path, found)
        if entries:
            log.info("outbox %s: %d messages from before the restart are queued for delivery", self._dir, len(entries))
        try:
            self._rotate()  # start from a compact journal
        except OSError as exc:
            self._disk_failed(exc)

    def _set_aside(self, path: Path, found: JournalRead) -> None:
        """Keep a damaged journal beside the clean one the next rotation writes, replacing the previous damaged one."""
        assert self._dir is not None
        for old in self._dir.glob(DAMAGED + "*"):
            with contextlib.suppress(OSError):
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                else:
                    old.unlink()
        kept = self._dir / f"{DAMAGED}{int(time.time())}"
        try:
            os.replace(path, kept)
            where = f"is kept as {kept}"
        except OSError as exc:
            where = f"could not be kept aside ({exc.strerror or exc})"
        log.warning("outbox %s is damaged (%s): %d unreadable records skipped, %d messages recovered; the damaged "
                    "file %s and a clean journal replaces it", path,
                    found.problem or "torn lines, bytes that are not UTF-8 or zeroed blocks", found.skipped,
                    len(found.entries), where)

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
        with contextlib.suppress(FileNotFoundError):  # left by a crash mid-rotation; if a FIFO, opening it would hang
            os.unlink(tmp)
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
