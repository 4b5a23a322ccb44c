"""The on-disk outbox: its journal survives a restart, stays compact and bounded, and is one agent's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2mu.agent.outbox import DAMAGED, JOURNAL, ROTATE_AFTER, Outbox, OutboxError


def test_outbox_journal_survives_reopen_and_skips_a_torn_line(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for i in range(5):
        box.put("har/activity/w", json.dumps({"seq": i}), True)
    handed = box.take(2)
    box.ack(handed[0].id)  # seq 0 delivered; seq 1 handed over but never acknowledged
    box.close()
    with open(tmp_path / JOURNAL, "a") as fh:
        fh.write('{"id": 99, "topic": "har/act')  # a crash in the middle of a write
    again = Outbox(tmp_path)
    assert [json.loads(e.payload)["seq"] for e in again.pending] == [1, 2, 3, 4]
    assert again.put("har/activity/w", "{}", True).id == 5  # ids keep growing across restarts
    again.close()


def test_outbox_rotates_to_a_compact_journal(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for i in range(ROTATE_AFTER + 3):
        box.put("t", str(i), False)
    for e in box.take(ROTATE_AFTER):
        box.ack(e.id)
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    assert [json.loads(ln)["payload"] for ln in lines] == [str(ROTATE_AFTER + i) for i in range(3)]
    assert not (tmp_path / (JOURNAL + ".tmp")).exists()
    box.close()


def test_outbox_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    box = Outbox(tmp_path, max_messages=3)
    for i in range(5):
        box.put("t", str(i), False)
    assert [e.payload for e in box.pending] == ["2", "3", "4"] and box.dropped == 2
    box.close()
    again = Outbox(tmp_path, max_messages=3)
    assert [e.payload for e in again.pending] == ["2", "3", "4"]
    again.close()


def test_outbox_directory_is_used_by_one_agent_at_a_time(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    with pytest.raises(OutboxError, match="another agent"):
        Outbox(tmp_path)
    box.close()


def _journal_of(n: int, path: Path, acked: tuple[int, ...] = ()) -> list[bytes]:
    """A journal of n queued messages (payload = seq) and acks for `acked`, written the way the outbox writes it."""
    lines = [json.dumps({"id": i, "topic": "har/activity/w", "payload": json.dumps({"seq": i}), "retain": True},
                        separators=(",", ":")).encode() + b"\n" for i in range(n)]
    lines += [json.dumps({"ack": i}).encode() + b"\n" for i in acked]
    path.write_bytes(b"".join(lines))
    return lines


def _seqs(box: Outbox) -> list[int]:
    return [json.loads(e.payload)["seq"] for e in box.pending]


def _damage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "is damaged" in r.getMessage()]


def _assert_recovered_cleanly(tmp_path: Path, box: Outbox, caplog: pytest.LogCaptureFixture, skipped: int,
                              recovered: int, original: bytes | None) -> None:
    """One WARNING naming the file, the count and the kept copy; the damaged bytes kept once; a clean journal."""
    warnings = _damage_warnings(caplog)
    assert len(warnings) == 1, warnings
    journal = tmp_path / JOURNAL
    kept = list(tmp_path.glob(DAMAGED + "*"))
    assert len(kept) == 1
    assert str(journal) in warnings[0] and f"{skipped} unreadable records skipped" in warnings[0]
    assert f"{recovered} messages recovered" in warnings[0] and f"kept as {kept[0]}" in warnings[0]
    if original is not None:
        assert kept[0].read_bytes() == original
    assert journal.is_file()
    assert [json.loads(ln)["id"] for ln in journal.read_text(encoding="utf-8").splitlines()] == \
        [e.id for e in box.pending]
    # Everything still works: a new message is journaled, and a restart reads the clean journal without a word.
    box.put("har/activity/w", json.dumps({"seq": 1000}), True)
    before = _seqs(box)
    box.close()
    caplog.clear()
    again = Outbox(tmp_path)
    assert _seqs(again) == before and not _damage_warnings(caplog)
    again.close()


def test_torn_lines_anywhere_are_skipped_counted_and_the_rest_delivered(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    lines = _journal_of(10, tmp_path / JOURNAL, acked=(0, 1))
    lines[4] = lines[4][:17] + b"\n"  # torn in the middle of the file, as by a crash with out-of-order writeback
    lines[7] = b'{"id": 7, "topic": "har/acti\n'
    damaged = b"".join(lines) + b'{"id": 10, "topic": "har/act'  # and the usual torn last line
    (tmp_path / JOURNAL).write_bytes(damaged)
    box = Outbox(tmp_path)
    assert _seqs(box) == [2, 3, 5, 6, 8, 9]
    _assert_recovered_cleanly(tmp_path, box, caplog, skipped=3, recovered=6, original=damaged)


def test_bytes_that_are_not_utf8_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = _journal_of(6, tmp_path / JOURNAL)
    lines[1] = b"\xff\xfe\xfa garbage\n"
    lines[3] = lines[3].replace(b"har/activity", b"har/\xffctivity")  # well-formed JSON around a bad byte
    damaged = b"".join(lines)
    (tmp_path / JOURNAL).write_bytes(damaged)
    box = Outbox(tmp_path)
    assert _seqs(box) == [0, 2, 4, 5]
    _assert_recovered_cleanly(tmp_path, box, caplog, skipped=2, recovered=4, original=damaged)


def test_zeroed_blocks_are_skipped_and_records_after_them_kept(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / JOURNAL
    lines = _journal_of(200, path)
    data = bytearray(path.read_bytes())
    block = 4096  # what a file system loses in a power cut: whole blocks read back as zeros
    data[block : 2 * block] = bytes(block)
    damaged = bytes(data) + bytes(3000)  # and a tail that was allocated but never written
    path.write_bytes(damaged)
    starts = [sum(map(len, lines[:i])) for i in range(len(lines))]
    intact = [i for i, s in enumerate(starts) if s + len(lines[i]) <= block or s >= 2 * block]
    assert 0 < len(intact) < 200  # the block really hit some records
    box = Outbox(tmp_path)
    # The record that starts inside the zeroed block lost its head; the one right after it is whole again.
    assert _seqs(box) == intact
    # One stretch of zeros with the torn record ends around it, and the zeroed tail: two unreadable records.
    _assert_recovered_cleanly(tmp_path, box, caplog, skipped=2, recovered=len(intact), original=damaged)


def test_records_of_the_wrong_shape_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = _journal_of(4, tmp_path / JOURNAL)
    wrong = [b"[1, 2]\n", b'{"id": "7", "topic": "t", "payload": "{}", "retain": true}\n',
             b'{"id": 8, "topic": "har/#", "payload": "{}", "retain": true}\n',  # paho would refuse to publish it
             b'{"id": 9, "topic": "t", "payload": {"seq": 9}, "retain": true}\n', b'{"ack": "1"}\n', b"null\n"]
    damaged = b"".join(lines[:2] + wrong + lines[2:])
    (tmp_path / JOURNAL).write_bytes(damaged)
    box = Outbox(tmp_path)
    assert _seqs(box) == [0, 1, 2, 3]
    _assert_recovered_cleanly(tmp_path, box, caplog, skipped=len(wrong), recovered=4, original=damaged)


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_journal_that_is_not_a_regular_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             kind: str) -> None:
    import os
    import stat

    path = tmp_path / JOURNAL
    if kind == "directory":
        path.mkdir()
        (path / "inside").write_text("x")
    else:
        os.mkfifo(path)  # opening it for reading the ordinary way would wait for a writer forever
    box = Outbox(tmp_path)
    assert len(box) == 0 and box.disk_error is None
    warning = _damage_warnings(caplog)
    assert len(warning) == 1 and f"it is a {'directory' if kind == 'directory' else 'FIFO'}, not a regular file" \
        in warning[0]
    kept = list(tmp_path.glob(DAMAGED + "*"))
    mode = kept[0].lstat().st_mode
    assert stat.S_ISDIR(mode) if kind == "directory" else stat.S_ISFIFO(mode)
    _assert_recovered_cleanly(tmp_path, box, caplog, skipped=0, recovered=0, original=None)


def test_only_the_latest_damaged_journal_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old_file, old_dir = tmp_path / f"{DAMAGED}1000", tmp_path / f"{DAMAGED}2000"
    old_file.write_bytes(b"older damage")
    old_dir.mkdir()
    (old_dir / "x").write_text("y")
    lines = _journal_of(3, tmp_path / JOURNAL)
    damaged = b"".join(lines) + b"\xff\n"
    (tmp_path / JOURNAL).write_bytes(damaged)
    box = Outbox(tmp_path)
    assert _seqs(box) == [0, 1, 2]
    assert not old_file.exists() and not old_dir.exists()
    _assert_recovered_cleanly(tmp_path, box, caplog, skipped=1, recovered=3, original=damaged)


def test_an_intact_journal_is_neither_reported_nor_copied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _journal_of(5, tmp_path / JOURNAL, acked=(0,))
    box = Outbox(tmp_path)
    assert _seqs(box) == [1, 2, 3, 4]
    assert not _damage_warnings(caplog) and not list(tmp_path.glob(DAMAGED + "*"))
    box.close()
