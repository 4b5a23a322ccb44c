"""The agent end to end: replayed WISDM session → ExecuTorch → real mosquitto → subscriber."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest

from l2mu.agent.recording import recording_from_wisdm, write_recording

from .conftest import REPO, TINY_WINDOW, cli_command, demo_lines

SCHEMA = json.loads((REPO / "docs" / "decision.schema.json").read_text())


class Collector:
    """A plain paho subscriber: what any consumer of har/# would see."""

    def __init__(self, url: str, topic: str = "har/#") -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        ready = queue.Queue()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: ready.put(True)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload, m.retain))
        self.client.connect(host, int(port))
        self.client.loop_start()
        ready.get(timeout=10)

    def take(self, timeout: float = 30.0, topic: str | None = None, payload: bytes | None = None,
             live: bool = False):  # noqa: ANN201
        """The first message matching; live=True skips retained ones left by earlier tests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if (topic is None or item[0] == topic) and (payload is None or item[1] == payload) \
                    and not (live and item[2]):
                return item
        raise AssertionError(f"no message on {topic} with {payload!r} within {timeout} s")

    def drain(self) -> list[tuple[str, bytes, bool]]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get())
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(scope="module")
def session_file(tmp_path_factory: pytest.TempPathFactory, wisdm_root: Path) -> Path:
    path = tmp_path_factory.mktemp("replay") / "subject1601.csv.gz"
    write_recording(path, recording_from_wisdm(wisdm_root, 1601, "FGR", seconds=12))
    return path


def run_agent(*args: str, **kw) -> subprocess.Popen:  # noqa: ANN003
    return subprocess.Popen([*cli_command(), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_replayed_session_publishes_schema_valid_decisions_in_order(mosquitto, tiny_program: Path,  # noqa: ANN001
                                                                    session_file: Path) -> None:
    sub = Collector(mosquitto.url)
    try:
        proc = run_agent("--watch", f"replay:{session_file}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                         "--speed", "0", "--agent-id", "test-replay")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        time.sleep(0.5)
        msgs = sub.drain()
    finally:
        sub.close()
    decisions = [json.loads(p) for t, p, _ in msgs if t == "har/activity/subject1601"]
    # 36 s of data, one decision per second once the first window is full.
    assert 30 <= len(decisions) <= 36
    for d in decisions:
        jsonschema.validate(d, SCHEMA)
        assert d["model"] == "tiny-test" and d["watch"] == "subject1601"
        assert d["activity"] in d["scores"] and abs(sum(d["scores"].values()) - 1) < 1e-3
        assert d["window_end"] - d["window_start"] == pytest.approx((TINY_WINDOW - 1) / 20, abs=1e-3)
    assert [d["seq"] for d in decisions] == list(range(len(decisions)))
    steps = [b["window_end"] - a["window_end"] for a, b in zip(decisions, decisions[1:], strict=False)]
    assert all(abs(s - 1.0) < 1e-3 for s in steps)
    status = [(p, r) for t, p, r in msgs if t == "har/status/test-replay"]
    assert status[0][0] == b"online" and status[-1][0] == b"offline"
    assert f"{len(decisions)} decisions" in err


def test_killed_agent_leaves_offline_via_last_will(mosquitto, tiny_program: Path, session_file: Path) -> None:  # noqa: ANN001
    sub = Collector(mosquitto.url)
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
    late = Collector(mosquitto.url, "har/status/test-kill")
    try:
        _, payload, retained = late.take(topic="har/status/test-kill")
        assert payload == b"offline" and retained
    finally:
        late.close()


def test_sigterm_publishes_offline_and_exits_cleanly(mosquitto, tiny_program: Path, session_file: Path) -> None:  # noqa: ANN001
    sub = Collector(mosquitto.url)
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


def test_unreachable_broker_is_one_line_error(tiny_program: Path) -> None:
    from l2mu.agent.broker import free_port

    proc = run_agent("--watch", "demo", "--model", str(tiny_program), "--mqtt", f"mqtt://127.0.0.1:{free_port()}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.strip().startswith("error: cannot reach MQTT broker 127.0.0.1:")
    assert len(err.strip().splitlines()) == 1
