"""The agent end to end: replayed WISDM session → ExecuTorch → real mosquitto → subscriber."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import jsonschema
import pytest

from tests.support.cli import TINY_WINDOW, demo_lines
from tests.support.mqtt import SCHEMA, Subscriber, decisions, make_recording, run_agent


@pytest.fixture(scope="module")
def session_file(tmp_path_factory: pytest.TempPathFactory, wisdm_root: Path) -> Path:
    path = tmp_path_factory.mktemp("replay") / "subject1601.csv.gz"
    return make_recording(wisdm_root, path)


def test_replayed_session_publishes_schema_valid_decisions_in_order(mosquitto, tiny_program: Path,  # noqa: ANN001
                                                                    session_file: Path) -> None:
    sub = Subscriber(mosquitto.port)
    try:
        proc = run_agent("--watch", f"replay:{session_file}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                         "--speed", "0", "--agent-id", "test-replay")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        time.sleep(0.5)
        msgs = sub.drain()
    finally:
        sub.close()
    published = decisions(msgs, "har/activity/subject1601")
    # 36 s of data, one decision per second once the first window is full.
    assert 30 <= len(published) <= 36
    for d in published:
        jsonschema.validate(d, SCHEMA)
        assert d["model"] == "tiny-test" and d["watch"] == "subject1601"
        assert d["activity"] in d["scores"] and abs(sum(d["scores"].values()) - 1) < 1e-3
        assert d["window_end"] - d["window_start"] == pytest.approx((TINY_WINDOW - 1) / 20, abs=1e-3)
    assert [d["seq"] for d in published] == list(range(len(published)))
    steps = [b["window_end"] - a["window_end"] for a, b in zip(published, published[1:], strict=False)]
    assert all(abs(s - 1.0) < 1e-3 for s in steps)
    status = [(p, r) for t, p, r in msgs if t == "har/status/test-replay"]
    assert status[0][0] == b"online" and status[-1][0] == b"offline"
    assert f"{len(published)} decisions" in err


def test_killed_agent_leaves_offline_via_last_will(mosquitto, tiny_program: Path, session_file: Path) -> None:  # noqa: ANN001
    sub = Subscriber(mosquitto.port)
    try:
        proc = run_agent("--watch", f"replay:{session_file}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                         "--agent-id", "test-kill")
        sub.take(topic="har/status/test-kill", payload=b"online")
        sub.take(topic="har/activity/subject1601", live=True)  # it is really working, in real time
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # No clean disconnect happened, so only the broker's will can say offline (after keepalive at worst).
        topic, payload, _ = sub.take(timeout=60, topic="har/status/test-kill", payload=b"offline")
    finally:
        sub.close()
    # A late subscriber sees the retained state.
    late = Subscriber(mosquitto.port, "har/status/test-kill")
    try:
        _, payload, retained = late.take(topic="har/status/test-kill")
        assert payload == b"offline" and retained
    finally:
        late.close()


def test_sigterm_publishes_offline_and_exits_cleanly(mosquitto, tiny_program: Path, session_file: Path) -> None:  # noqa: ANN001
    sub = Subscriber(mosquitto.port)
    try:
        proc = run_agent("--watch", f"replay:{session_file}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                         "--agent-id", "test-term")
        sub.take(topic="har/activity/subject1601", live=True)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        sub.take(timeout=5, topic="har/status/test-term", payload=b"offline")
    finally:
        sub.close()


def test_demo_with_embedded_broker_prints_received_messages_with_truth(tiny_program: Path) -> None:
    lines = demo_lines("--model", str(tiny_program), "--speed", "20", count=5, timeout=60)
    assert len(lines) == 5
    assert all("true: typing" in ln for ln in lines)  # the demo starts with 30 s of typing


def test_unreachable_broker_is_waited_for_not_fatal(tiny_program: Path) -> None:
    """It used to be `error: cannot reach MQTT broker …`, exit 2: now the agent runs, queues and keeps trying."""
    from l2mu.agent.broker import free_port
    from tests.support.mqtt import StderrLines

    port = free_port()
    proc = run_agent("--watch", "demo", "--model", str(tiny_program), "--mqtt", f"mqtt://127.0.0.1:{port}",
                     "--speed", "20")
    err = StderrLines(proc)
    try:
        err.wait_for(f"cannot reach MQTT broker 127.0.0.1:{port}", timeout=120)
        time.sleep(2.5)  # at 20× the demo makes decisions quickly, and retries come at 1 and 3 s
        assert proc.poll() is None, "\n".join(err.seen)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    lines = err.all()
    assert sum("cannot reach MQTT broker" in ln for ln in lines) == 1, lines
    # Without --queue-dir it waits --drain s for the broker, then says what could not be delivered.
    assert any(ln.startswith("WARNING l2mu.agent.mqtt: ") and "decisions not delivered at exit" in ln for ln in lines)
    assert not any("Traceback" in ln or ln.startswith("error:") for ln in lines), lines


def test_bad_broker_url_is_one_line_error(tiny_program: Path) -> None:
    proc = run_agent("--watch", "demo", "--model", str(tiny_program), "--mqtt", "mqtt://127.0.0.1:port")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().splitlines() == ["error: broker URL 'mqtt://127.0.0.1:port': bad port"], err
