"""Fault matrix: each fault against a running agent; it keeps serving the rest, says what happened in one log line,
and loses no decision it already made.

The agent here is the load rig (`python -m l2mu.agent.bench.load --commands`, a real process): the real Agent,
MqttPublisher and Outbox fed by virtual watches whose protocol bytes (real WISDM data) enter through the same
intake BLE notifications use; faults inside the agent (garbage frames, a dropped link) are asked for on its stdin,
faults around it (broker, network, disk) are made for real: mosquitto killed with SIGKILL, a TCP proxy that
delays every byte, a queue directory on an 8 KiB filesystem. Start-up faults (model file, config) run
`l2mu-agent run` itself. Related coverage elsewhere: tests/integration/test_ble.py drops a watch's link over real D-Bus
(test_link_loss_reconnects_and_both_sides_of_the_outage_are_classified; `test_fault_ble_link_drop` below does it
with two watches and checks every decision), tests/integration/test_mqtt_outage.py restarts the broker under `run`, and
tests/unit/test_settings.py checks every config key's type."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from l2mu.agent.broker import LocalBroker, free_port, mosquitto_binary
from l2mu.agent.sim.slowlink import DelayProxy
from tests.support.cli import cli_command
from tests.support.mqtt import Subscriber, decisions


class RigProcess:
    """The load rig with faults on stdin; its stdout answers and its log are collected while it runs."""

    def __init__(self, mqtt: str, model: Path, *args: str, watches: int = 3, prefix: str = "har",
                 wrap: list[str] | None = None, preexec=None) -> None:  # noqa: ANN001
        cmd = [*(wrap or []), sys.executable, "-m", "l2mu.agent.bench.load", "--watches", str(watches),
               "--seconds", "300", "--mqtt", mqtt, "--model", str(model), "--commands", "--topic-prefix", prefix,
               *args]
        self.prefix = prefix
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=preexec)
        self.log: list[str] = []
        self.answers: queue.Queue[dict] = queue.Queue()
        self.report: dict | None = None
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for r in self._readers:
            r.start()
        ready = self._answer(timeout=120)
        assert ready.get("event") == "ready", ready
        self.watches: list[str] = ready["watches"]

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                d = json.loads(line)
                if "event" in d:
                    self.answers.put(d)
                else:
                    self.report = d

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def _answer(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.proc.poll() is None or not self.answers.empty()):
            with contextlib.suppress(queue.Empty):
                return self.answers.get(timeout=0.2)
        raise AssertionError("the rig did not answer; log:\n" + "\n".join(self.log[-30:]))

    def send(self, command: str) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._answer()
        assert answer["event"] in ("ok", "status"), answer
        return answer

    def status(self) -> dict:
        return self.send("status")

    def wait(self, condition, what: str, timeout: float = 60) -> dict:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if condition(s):
                return s
            time.sleep(0.3)
        raise AssertionError(f"waited {timeout:g} s for {what}; last status {s}; log:\n" + "\n".join(self.log[-30:]))

    def wait_decisions(self, each: int, timeout: float = 60) -> dict:
        return self.wait(lambda s: len(s["made"]) == len(self.watches) and min(s["made"].values()) >= each,
                         f"{each} decisions from every watch", timeout)

    def wait_drained(self, timeout: float = 60) -> dict:
        return self.wait(lambda s: s["queued"] == 0 and s["acked"] == s["made"], "every decision acknowledged",
                         timeout)

    def wait_log(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((ln for ln in self.log if text in ln), None)
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no log line with {text!r}; log:\n" + "\n".join(self.log[-30:]))

    def finish(self, timeout: float = 60) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout)
        for r in self._readers:
            r.join(5)
        assert self.proc.returncode == 0, "\n".join(self.log[-30:])
        assert self.report is not None
        return self.report

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def lines_with(log: list[str], text: str) -> list[str]:
    return [ln for ln in log if text in ln]


def assert_nothing_lost(report: dict, msgs: list, prefix: str) -> None:
    """Every decision made was acknowledged by the broker and reached a subscriber, in seq order, per watch."""
    assert report["decisions"] > 0 and report["decisions_lost"] == 0 and report["acked_out_of_order"] == 0
    for watch, w in report["per_watch"].items():
        assert w["acked"] == w["decisions"], watch
        seqs = [d["seq"] for d in decisions(msgs, f"{prefix}/activity/{watch}")]
        first_seen = list(dict.fromkeys(seqs))  # QoS 1 may repeat one after a reconnect
        assert first_seen == list(range(w["decisions"])), f"{watch}: {first_seen}"


@pytest.fixture
def persistent_broker(tmp_path: Path):
    """mosquitto on a fixed port that saves its sessions every second, so a subscriber's session (and what was
    queued for it) survives a SIGKILL; `kill()` then `start()` brings it back on the same port."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    store = tmp_path / "store"
    store.mkdir()
    broker = LocalBroker(prefer="mosquitto", port=free_port(),
                         extra_config=f"persistence true\npersistence_location {store}/\nautosave_interval 1\n")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def watch_faults(mosquitto, tiny_program: Path):  # noqa: ANN001
    sub = Subscriber(mosquitto.port, "wf/activity/#")
    rig = RigProcess(mosquitto.url, tiny_program, "--agent-id", "faults-watch", prefix="wf")
    try:
        garbled, dropped, clean = rig.watches  # polar, metawear, l2mu
        rig.wait_decisions(2)
        rig.send(f"garbage {garbled} 40 short")
        at_drop = rig.status()["made"][dropped]
        rig.send(f"drop {dropped} 2")
        rig.wait(lambda s: s["made"][dropped] >= at_drop + 2, "decisions after the reconnect", timeout=30)
        report = rig.finish()
        msgs = sub.drain(1.0)
    finally:
        rig.kill()
        sub.close()
    return {"report": report, "log": rig.log, "msgs": msgs, "garbled": garbled, "dropped": dropped, "clean": clean,
            "at_drop": at_drop}


def test_fault_garbage_frames_from_one_watch(watch_faults: dict) -> None:
    r, garbled, clean = watch_faults["report"], watch_faults["garbled"], watch_faults["clean"]
    per = r["per_watch"]
    assert per[garbled]["decode_errors"] == 40
    assert all(w["decode_errors"] == 0 for name, w in per.items() if name != garbled)
    # One line says what happened; the other 39 are only counted.
    said = lines_with(watch_faults["log"], "dropped a")
    assert len(said) == 1 and f"{garbled}: dropped a polar frame (truncated PMD frame header)" in said[0]
    # Its stream went on undisturbed: no gap, as many decisions as the clean watch (± the start offsets).
    assert per[garbled]["gaps"] == 0 and per[garbled]["decisions"] >= per[clean]["decisions"] - 1
    assert r["samples_dropped"] == 0
    assert_nothing_lost(r, watch_faults["msgs"], "wf")


def test_fault_link_drop_at_the_notification_feed(watch_faults: dict) -> None:
    """The watch's stream stops for 2 s (its notifications are lost) and restarts after a reconnect handshake."""
    r, dropped, clean = watch_faults["report"], watch_faults["dropped"], watch_faults["clean"]
    per = r["per_watch"]
    said = [ln for ln in watch_faults["log"] if ln.startswith("WARNING") and dropped in ln]
    assert len(said) == 1 and "link lost" in said[0]
    assert per[dropped]["link_drops"] == 1 and per[dropped]["gaps"] >= 1
    assert per[dropped]["decisions"] >= watch_faults["at_drop"] + 2  # it came back
    assert per[clean]["gaps"] == 0 and per[clean]["link_drops"] == 0  # the others never noticed
    assert_nothing_lost(r, watch_faults["msgs"], "wf")


@pytest.mark.parametrize("gatt_removal_delay_s", [0.0, 0.5], ids=["gatt-gone-at-once", "gatt-gone-late"])
def test_fault_ble_link_drop(mosquitto, tiny_program: Path, gatt_removal_delay_s: float) -> None:  # noqa: ANN001
    """Over real D-Bus: `l2mu-agent run` (bleak) connected to two virtual watches of the virtual BlueZ; one watch's
    radio link fails (supervision timeout) while it stays in range, so the agent reconnects to it. Late: the
    agent starts reconnecting before it has seen the old GATT objects go, and must not reuse them (bleak's
    service cache would: StartNotify on an object that no longer exists)."""
    from l2mu.agent.sim.bluez import VirtualBluetooth
    from l2mu.agent.sim.dbus_daemon import PrivateBus
    from l2mu.agent.sim.watches import MotionTape, make_watch
    from l2mu.agent.sources import demo_recording, topic_safe
    from tests.support.ble import AgentProcess

    drop, stay = "C0:FF:EE:00:09:01", "C0:FF:EE:00:09:02"
    topics = {a: f"bl/activity/{topic_safe(a)}" for a in (drop, stay)}
    tape = MotionTape.from_file(demo_recording())
    got: dict[str, list[dict]] = {a: [] for a in topics}

    def collect(sub: Subscriber, until, timeout: float = 60) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                topic, payload, retained = sub.messages.get(timeout=0.3)
                for a, t in topics.items():
                    if t == topic and not retained:
                        got[a].append(json.loads(payload))
        assert until(), f"{ {a: len(v) for a, v in got.items()} }; log:\n" + "\n".join(agent.lines[-30:])

    with PrivateBus() as bus, VirtualBluetooth(bus.address, gatt_removal_delay_s=gatt_removal_delay_s) as bluetooth:
        bluetooth.call(lambda a: a.add(make_watch("l2mu", tape, drop, 4.0)))
        bluetooth.call(lambda a: a.add(make_watch("metawear", tape, stay, 4.0)))
        sub = Subscriber(mosquitto.port, "bl/activity/#")
        agent = AgentProcess(bus.address, "--watch", drop, "--watch", stay, "--mqtt", mosquitto.url, "--model",
                             str(tiny_program), "--agent-id", "faults-ble", "--topic-prefix", "bl",
                             "--scan-timeout", "10", "--retry-budget", "30")
        try:
            collect(sub, lambda: all(len(v) >= 3 for v in got.values()))
            before = len(got[drop])
            bluetooth.call(lambda a: a.drop_link(drop))
            agent.wait_for_line(f"{drop}: connected again", timeout=30)
            collect(sub, lambda: len(got[drop]) >= before + 3)
        finally:
            rc = agent.stop()
            with contextlib.suppress(queue.Empty):
                while True:
                    topic, payload, retained = sub.messages.get(timeout=1.0)
                    for a, t in topics.items():
                        if t == topic and not retained:
                            got[a].append(json.loads(payload))
            sub.close()
    assert rc == 0, "\n".join(agent.lines[-30:])
    said = [ln for ln in agent.lines if ln.startswith("WARNING") and drop in ln]
    assert len(said) == 1 and "link lost" in said[0]
    for address in (drop, stay):
        made = int(next(ln for ln in agent.lines if ln.startswith(f"{topic_safe(address)}: ")).split()[1])
        assert list(dict.fromkeys(d["seq"] for d in got[address])) == list(range(made)), address
    # The watch that kept its link never noticed: its windows follow each other without a jump.
    ends = [d["window_end"] for d in got[stay]]
    assert all(abs(b - a - 1.0) < 0.05 for a, b in zip(ends, ends[1:], strict=False))


def test_fault_broker_killed_and_restarted(persistent_broker: LocalBroker, tiny_program: Path) -> None:
    sub = Subscriber(persistent_broker.port, "bk/activity/#", client_id="faults-bk", clean=False)
    rig = RigProcess(persistent_broker.url, tiny_program, "--agent-id", "faults-bk", watches=2, prefix="bk")
    try:
        rig.wait_decisions(2)
        time.sleep(1.5)  # the subscriber's session is in the broker's autosave by now
        persistent_broker.kill()
        rig.wait_log("lost the broker", timeout=10)
        down = rig.status()
        time.sleep(3)
        assert rig.status()["made"] != down["made"], "the agent stopped deciding while the broker was away"
        persistent_broker.start()
        rig.wait_drained()
        report = rig.finish()
        msgs = sub.drain(1.5)
    finally:
        rig.kill()
        sub.close()
    assert len(lines_with(rig.log, "lost the broker")) == 1
    assert report["samples_dropped"] == 0
    assert_nothing_lost(report, msgs, "bk")


def test_fault_broker_accepting_but_slow(mosquitto, tiny_program: Path) -> None:  # noqa: ANN001
    with DelayProxy(mosquitto.port) as proxy:
        sub = Subscriber(mosquitto.port, "sl/activity/#")  # the consumer's own link is fine
        rig = RigProcess(proxy.url, tiny_program, "--agent-id", "faults-slow", "--slow-after", "1.5", watches=2,
                         prefix="sl")
        try:
            rig.wait_decisions(2)
            proxy.delay_s = 2.5  # every byte, both ways: each PUBACK comes 5 s after its PUBLISH
            rig.wait_log("has acknowledged nothing", timeout=20)
            slow = rig.status()
            time.sleep(2)
            assert rig.status()["made"] != slow["made"], "the agent stopped deciding while the broker was slow"
            proxy.delay_s = 0.0
            rig.wait_log("acknowledges again", timeout=20)
            rig.wait_drained()
            report = rig.finish()
            msgs = sub.drain(1.0)
        finally:
            rig.kill()
            sub.close()
    assert len(lines_with(rig.log, "has acknowledged nothing")) == 1
    assert report["samples_dropped"] == 0  # it kept sampling: the backlog waited in the outbox, not in the intake
    assert_nothing_lost(report, msgs, "sl")


def small_disk(folder: Path, kib: int) -> tuple[list[str], object, str]:
    """A filesystem of `kib` KiB on `folder`, for the agent process only: a tmpfs in a private mount namespace
    (`unshare`, as root or in a user namespace; real ENOSPC), else a file-size limit (RLIMIT_FSIZE: EFBIG,
    works anywhere). Returns (command prefix, preexec function, how)."""
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size={kib}k tmpfs {folder}"],
                           capture_output=True) if shutil.which("unshare") else None
    if probe is not None and probe.returncode == 0:
        script = 'mount -t tmpfs -o size="$0"k tmpfs "$1" && shift && exec "$@"'
        return ["unshare", "-Urm", "sh", "-c", script, str(kib), str(folder)], None, "tmpfs"

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))

    return [], limit, "RLIMIT_FSIZE"


def test_fault_offline_queue_disk_full(persistent_broker: LocalBroker, tiny_program: Path, tmp_path: Path) -> None:
    folder = tmp_path / "queue"
    folder.mkdir()
    wrap, preexec, how = small_disk(folder, kib=8)
    sub = Subscriber(persistent_broker.port, "df/activity/#", client_id="faults-df", clean=False)
    rig = RigProcess(persistent_broker.url, tiny_program, "--agent-id", "faults-df", "--queue-dir", str(folder),
                     prefix="df", wrap=wrap, preexec=preexec)
    try:
        full = rig.wait_log("cannot write the queue to disk", timeout=60)
        assert ("No space left on device" if how == "tmpfs" else "File too large") in full
        time.sleep(1.5)  # the subscriber's session is in the broker's autosave by now
        persistent_broker.stop()  # and now the broker goes too: everything waits in memory
        time.sleep(3)
        persistent_broker.start()
        rig.wait_drained()
        # Once all of it was delivered, the old journal is emptied and the queue is on disk again.
        back = rig.wait_log("writing the queue to disk again", timeout=20)
        report = rig.finish()
        msgs = sub.drain(1.5)
    finally:
        rig.kill()
        sub.close()
    said = rig.log[:rig.log.index(back)]
    assert len(lines_with(said, "cannot write the queue to disk")) == 1
    assert report["samples_dropped"] == 0
    assert_nothing_lost(report, msgs, "df")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), "run", *args], capture_output=True, text=True, timeout=300)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("damage,message", [
    ("truncated", "does not match its metadata (truncated, corrupt or from another export)"),
    ("format", "model metadata format 2 is not supported (expected 1)"),
    ("window", "ExecuTorch cannot load it"),
])
def test_fault_model_file_truncated_or_from_another_model_version(damage: str, message: str, tmp_path: Path,
                                                                  tiny_program: Path, mosquitto) -> None:  # noqa: ANN001
    """A bad model is refused at start, in one line, before any watch or broker is touched (on a reload the old
    model goes on instead: tests/integration/test_hotswap.py)."""
    from l2mu.model.metadata import sha256_file

    program, meta_path = tmp_path / "m.pte", tmp_path / "m.json"
    shutil.copy(tiny_program, program)
    meta = json.loads(tiny_program.with_suffix(".json").read_text())
    if damage == "truncated":
        program.write_bytes(tiny_program.read_bytes()[: tiny_program.stat().st_size // 2])
    elif damage == "format":
        meta["format_version"] = 2  # written by a later exporter
    else:
        # Metadata of another version of the model (40-sample windows) beside this program, checksum and all.
        meta["window_samples"] = 40
        meta["program_sha256"] = sha256_file(program)
    meta_path.write_text(json.dumps(meta))
    line = one_line(run_cli("--watch", "demo", "--mqtt", mosquitto.url, "--model", str(program)))
    assert line.startswith("error: ") and message in line


@pytest.mark.parametrize("text,message", [
    ("queue_size = \"big\"\n", "queue_size: expected an integer, got 'big'"),
    ("decision_period = true\n", "decision_period: expected a number, got true"),
    ("[mqtt]\nurl = 1883\n", "mqtt.url: expected a string, got 1883"),
])
def test_fault_config_with_a_wrong_type(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('watches = ["demo"]\n' + text)
    assert one_line(run_cli("--config", str(path))) == f"error: {path}: {message}"
