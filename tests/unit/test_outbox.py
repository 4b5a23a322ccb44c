"""The on-disk outbox: its journal survives a restart, stays compact and bounded, and is one agent's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2mu.agent.outbox import JOURNAL, ROTATE_AFTER, Outbox, OutboxError


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
