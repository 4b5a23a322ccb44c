"""Broker outages: decisions made while the broker is away are queued and delivered in order afterwards."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from l2mu.agent.broker import LocalBroker, free_port, mosquitto_binary
from l2mu.agent.mqtt import MqttPublisher
from l2mu.agent.outbox import JOURNAL, Outbox, read_journal
from tests.support.mqtt import StderrLines, Subscriber, decisions, make_certificates, make_recording, run_agent


@pytest.fixture
def restartable(tmp_path: Path):
    """mosquitto on a fixed port whose sessions survive a restart, so a consumer with a persistent
    session gets what was published while it was itself still reconnecting."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    store = tmp_path / "mosquitto-store"
    store.mkdir()
    broker = LocalBroker(prefer="mosquitto", port=free_port(),
                         extra_config=f"persistence true\npersistence_location {store}/\n")
    broker.start()
    yield broker
    broker.stop()


def assert_complete_and_in_order(seqs: list[int], made: int) -> None:
    first_seen = list(dict.fromkeys(seqs))
    assert sorted(set(seqs)) == list(range(made)), f"missing: {sorted(set(range(made)) - set(seqs))}"
    assert first_seen == sorted(first_seen), "decisions arrived out of order"


def test_publisher_queues_through_a_broker_restart(restartable: LocalBroker) -> None:
    sub = Subscriber(restartable.port, "har/activity/#", client_id="outage-sub-1", clean=False)
    pub = MqttPublisher(restartable.url, "outage-inproc")
    pub.connect()
    made = 0
    try:
        for _ in range(20):
            pub.publish_decision("w1", {"seq": made})
            made += 1
            time.sleep(0.02)
        restartable.stop()
        for _ in range(30):  # the agent keeps deciding while the broker is down
            pub.publish_decision("w1", {"seq": made})
            made += 1
            time.sleep(0.05)
        restartable.start()
        for _ in range(20):
            pub.publish_decision("w1", {"seq": made})
            made += 1
            time.sleep(0.02)
        assert pub.flush(30), "queued decisions were not delivered after the broker came back"
        msgs = sub.drain(1.0)
    finally:
        pub.close()
        sub.close()
    assert_complete_and_in_order([d["seq"] for d in decisions(msgs, "har/activity/w1")], made)


def test_queue_dir_keeps_decisions_across_an_agent_restart(restartable: LocalBroker, tmp_path: Path) -> None:
    queue_dir = tmp_path / "queue"
    pub = MqttPublisher(restartable.url, "outage-disk", outbox=Outbox(queue_dir))
    pub.connect()
    pub.publish_decision("w2", {"seq": 0})
    assert pub.flush(10)
    restartable.stop()
    for seq in range(1, 6):
        pub.publish_decision("w2", {"seq": seq})
    pub.close()  # the broker is away: the five decisions stay on disk
    restartable.start()
    sub = Subscriber(restartable.port, "har/activity/w2")
    sub.take(topic="har/activity/w2")  # the retained seq 0
    pub = MqttPublisher(restartable.url, "outage-disk", outbox=Outbox(queue_dir))
    try:
        pub.connect()
        assert pub.flush(10)
        msgs = sub.drain(0.5)
    finally:
        pub.close()
        sub.close()
    assert [d["seq"] for d in decisions(msgs, "har/activity/w2")] == [1, 2, 3, 4, 5]


def test_agent_streams_through_a_broker_outage(restartable: LocalBroker, tiny_program: Path, wisdm_root: Path,
                                               tmp_path: Path) -> None:
    recording = make_recording(wisdm_root, tmp_path / "outage.csv.gz", "FGOR", seconds=12)
    sub = Subscriber(restartable.port, "har/activity/#", client_id="outage-sub-2", clean=False)
    proc = run_agent("--watch", f"replay:{recording}", "--mqtt", restartable.url, "--model", str(tiny_program),
                     "--speed", "3", "--agent-id", "test-outage")
    try:
        while json.loads(sub.take(timeout=60, topic="har/activity/outage")[1])["seq"] < 4:
            pass
        restartable.stop()
        time.sleep(3)  # ~9 decisions are made meanwhile
        assert proc.poll() is None, "the agent died with the broker"
        restartable.start()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        msgs = sub.drain(1.0)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        sub.close()
    made = int(next(ln for ln in err.splitlines() if ln.startswith("outage: ")).split()[1])
    seqs = [d["seq"] for d in decisions(msgs, "har/activity/outage")]
    assert made >= 40
    # The subscriber saw seq ≤ 4 before the outage (taken above); everything from there on arrives.
    assert_complete_and_in_order(list(range(5)) + [s for s in seqs if s >= 5], made)
    assert "lost the broker" in err


@pytest.mark.parametrize("queued_in", ["memory", "queue-dir"])
def test_agent_started_before_the_broker_delivers_every_decision_from_seq_0(
        restartable: LocalBroker, tiny_program: Path, wisdm_root: Path, tmp_path: Path, queued_in: str) -> None:
    """After a power cut the Pi often boots before the broker: the agent must not wait for it, nor lose a decision."""
    watch = f"late-{queued_in}"
    recording = make_recording(wisdm_root, tmp_path / f"{watch}.csv.gz", "FGR", seconds=12)
    # The consumer's persistent session exists before the agent starts, so what the agent delivers the moment the
    # broker appears is kept for it while it is itself reconnecting; the agent has never seen this broker.
    sub = Subscriber(restartable.port, f"har/activity/{watch}", client_id=f"late-sub-{queued_in}", clean=False)
    restartable.stop()
    queue_dir = tmp_path / "queue"
    proc = run_agent("--watch", f"replay:{recording}", "--mqtt", restartable.url, "--model", str(tiny_program),
                     "--speed", "4", "--agent-id", watch,
                     *(["--queue-dir", str(queue_dir)] if queued_in == "queue-dir" else []))
    err = StderrLines(proc)
    try:
        warning = err.wait_for("cannot reach MQTT broker", timeout=120)  # model loading is slow on a busy machine
        time.sleep(3)  # a dozen decisions are made and queued meanwhile
        assert proc.poll() is None, "the agent gave up on the absent broker"
        restartable.start()
        connected = err.wait_for("connected to MQTT broker", timeout=60)
        assert proc.wait(120) == 0, "\n".join(err.all())
        msgs = sub.drain(1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
    lines = err.all()
    assert warning == (f"WARNING l2mu.agent.mqtt: cannot reach MQTT broker 127.0.0.1:{restartable.port} (Connection "
                       "refused); decisions are queued until it answers, retrying every 1–30 s")
    assert connected.startswith(f"INFO l2mu.agent.mqtt: connected to MQTT broker 127.0.0.1:{restartable.port} after ")
    backlog = int(connected.split("delivering ")[1].split()[0])
    assert backlog >= 8, connected
    # One line each way, none per retry, and nothing else about the broker.
    assert sum("MQTT broker" in ln or "the broker" in ln for ln in lines) == 2, lines
    assert not any("Traceback" in ln or ln.startswith(("ERROR", "error:")) for ln in lines), lines
    made = int(next(ln for ln in lines if ln.startswith(f"{watch}: ")).split()[1])
    assert made >= 30
    assert_complete_and_in_order([d["seq"] for d in decisions(msgs, f"har/activity/{watch}")], made)
    if queued_in == "queue-dir":
        assert read_journal(queue_dir / JOURNAL).entries == []  # all delivered, nothing left for the next start


def test_broker_configuration_errors_still_stop_the_start(tiny_program: Path, tmp_path: Path) -> None:
    """Only reachability is retried: what the user must fix ends `run` with one line, even if no broker listens."""
    port = free_port()
    cases = {
        "--password-file": (["--username", "u", "--password-file", str(tmp_path / "missing")],
                            f"error: --password-file {tmp_path / 'missing'}: cannot read it"),
        "--ca-file": (["--ca-file", str(tmp_path / "ca.pem")],
                      f"error: --ca-file {tmp_path / 'ca.pem'}: file not found"),
    }
    for option, (args, expected) in cases.items():
        scheme = "mqtts" if option == "--ca-file" else "mqtt"
        proc = run_agent("--watch", "demo", "--model", str(tiny_program), "--mqtt", f"{scheme}://127.0.0.1:{port}",
                         *args)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (option, err)
        assert err.strip().splitlines() == [err.strip()] and err.startswith(expected), (option, err)


def test_a_damaged_journal_is_recovered_and_run_goes_on(mosquitto, tiny_program: Path, wisdm_root: Path,  # noqa: ANN001
                                                        tmp_path: Path) -> None:
    """A power cut left torn lines, bytes that are not UTF-8 and a zeroed block in the queue: `run` used to stop
    with `error: 'utf-8' codec can't decode byte 0xff …`, and systemd restarted it into the same error forever."""
    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    old = [json.dumps({"id": i, "topic": "har/activity/before-cut", "payload": json.dumps({"seq": i}),
                       "retain": True}).encode() + b"\n" for i in range(12)]
    old[3] = b"\xff\xfe\x00\x01 not a record\n"
    old[6] = bytes(len(old[6]) - 1) + b"\n"  # a zeroed block
    damaged = b"".join(old) + b'{"id": 12, "topic": "har/act'
    (queue_dir / JOURNAL).write_bytes(damaged)
    recording = make_recording(wisdm_root, tmp_path / "after-cut.csv.gz", "F", seconds=6)
    sub = Subscriber(mosquitto.port, "har/activity/#")
    try:
        proc = run_agent("--watch", f"replay:{recording}", "--mqtt", mosquitto.url, "--model", str(tiny_program),
                         "--speed", "0", "--queue-dir", str(queue_dir), "--agent-id", "after-cut")
        _, err = proc.communicate(timeout=120)
        msgs = [m for m in sub.drain(1.0) if not m[2]]
    finally:
        sub.close()
    assert proc.returncode == 0, err
    kept = list(queue_dir.glob(JOURNAL + ".damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == damaged
    warnings = [ln for ln in err.splitlines() if "is damaged" in ln]
    assert warnings == [f"WARNING l2mu.agent.outbox: outbox {queue_dir / JOURNAL} is damaged (torn lines, bytes "
                        "that are not UTF-8 or zeroed blocks): 3 unreadable records skipped, 10 messages recovered; "
                        f"the damaged file is kept as {kept[0]} and a clean journal replaces it"], err
    assert "Traceback" not in err and "error:" not in err
    # Everything readable was delivered, before the new run's own decisions; then nothing is left in the journal.
    assert [d["seq"] for d in decisions(msgs, "har/activity/before-cut")] == [0, 1, 2, 4, 5, 7, 8, 9, 10, 11]
    topics = [t for t, _, _ in msgs]
    assert topics.index("har/activity/after-cut") > max(i for i, t in enumerate(topics) if t.endswith("before-cut"))
    made = int(next(ln for ln in err.splitlines() if ln.startswith("after-cut: ")).split()[1])
    assert [d["seq"] for d in decisions(msgs, "har/activity/after-cut")] == list(range(made))
    assert read_journal(queue_dir / JOURNAL).entries == [] and (queue_dir / JOURNAL).is_file()


def test_a_broker_that_appears_with_an_untrusted_certificate_is_one_error_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Absent at start, then there but failing the TLS handshake: said once per reason, not once per retry."""
    import logging

    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    certs = make_certificates(tmp_path)
    tls_port = free_port()
    broker = LocalBroker(prefer="mosquitto", files={n: p.read_bytes() for n, p in certs.items()},
                         extra_config=f"listener {tls_port} 127.0.0.1\n"
                                      "cafile {dir}/ca.crt\ncertfile {dir}/server.crt\nkeyfile {dir}/server.key\n")
    # No --ca-file: the system CAs do not know the test CA.
    pub = MqttPublisher(f"mqtts://127.0.0.1:{tls_port}", "late-tls", retry_min_s=0.1, retry_max_s=0.3)
    caplog.set_level(logging.INFO, logger="l2mu.agent.mqtt")
    try:
        assert pub.connect() is False
        broker.start()
        deadline = time.monotonic() + 3  # ten retries or more
        while time.monotonic() < deadline:
            time.sleep(0.1)
        assert not pub.connected.is_set()
    finally:
        pub.close(drain_timeout=0.1)
        broker.stop()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("cannot reach MQTT broker" in ln for ln in lines) == 1, lines
    tls = [ln for ln in lines if "TLS with MQTT broker" in ln]
    assert len(tls) == 1 and tls[0].startswith(f"TLS with MQTT broker 127.0.0.1:{tls_port} failed ("), lines
    assert tls[0].endswith("); retrying")


@pytest.mark.parametrize("on_disk", [False, True])
def test_drain_bench_delivers_a_late_brokers_backlog_in_order(on_disk: bool, tmp_path: Path) -> None:
    from l2mu.agent.bench.drain import drain_once

    row = drain_once(300, tmp_path / "queue" if on_disk else None)
    assert (row["decisions"], row["missing"], row["in_order"]) == (300, 0, True), row
    assert row["queue"] == ("disk" if on_disk else "memory") and row["drain_s"] > 0
