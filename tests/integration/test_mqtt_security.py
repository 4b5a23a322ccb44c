"""mqtts://, user names and passwords, ACLs: against mosquitto with a password file, an ACL and TLS."""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import jsonschema
import pytest

from l2mu.agent.broker import LocalBroker, free_port, mosquitto_binary
from tests.support.mqtt import SCHEMA, Subscriber, decisions, make_certificates, make_recording, run_agent

USERS = {"agent": "agent-secret-1", "restricted": "restricted-secret-2", "reader": "reader-secret-3"}


ACL = """user agent
topic readwrite har/#
topic read homeassistant/status

user restricted
topic write har/status/#

user reader
topic read har/#
"""


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """(broker, TLS port, CA file): anonymous clients refused on both listeners; the plain one is for readers."""
    if mosquitto_binary() is None or subprocess.run(["which", "mosquitto_passwd"], capture_output=True).returncode:
        pytest.fail("mosquitto and mosquitto_passwd are needed (apt-get install mosquitto)")
    folder = tmp_path_factory.mktemp("secure-broker")
    certs = make_certificates(folder)
    passwd = folder / "passwd"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, password],
                       check=True, capture_output=True)
    tls_port = free_port()
    files = {"passwd": passwd.read_text(), "acl": ACL, **{name: path.read_bytes() for name, path in certs.items()}}
    config = (
        "allow_anonymous false\npassword_file {dir}/passwd\nacl_file {dir}/acl\n"
        f"listener {tls_port} 127.0.0.1\n"
        "cafile {dir}/ca.crt\ncertfile {dir}/server.crt\nkeyfile {dir}/server.key\n"
    )
    with LocalBroker(prefer="mosquitto", extra_config=config, files=files) as broker:
        yield broker, tls_port, certs["ca.crt"]


@pytest.fixture(scope="module")
def recording(wisdm_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_recording(wisdm_root, tmp_path_factory.mktemp("secure") / "secured.csv.gz", "FG", seconds=10)


def reader(broker: LocalBroker) -> Subscriber:
    return Subscriber(broker.port, "har/#", username="reader", password=USERS["reader"])


def test_tls_with_credentials_from_the_environment(secure, tiny_program: Path, recording: Path) -> None:  # noqa: ANN001
    broker, tls_port, ca = secure
    sub = reader(broker)
    try:
        proc = run_agent("--watch", f"replay:{recording}", "--mqtt", f"mqtts://127.0.0.1:{tls_port}",
                         "--ca-file", str(ca), "--model", str(tiny_program), "--speed", "0", "--agent-id", "tls",
                         env={"L2MU_MQTT_USERNAME": "agent", "L2MU_MQTT_PASSWORD": USERS["agent"]})
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        msgs = sub.drain(1.0)
    finally:
        sub.close()
    got = decisions(msgs, "har/activity/secured")
    assert [d["seq"] for d in got] == list(range(len(got))) and len(got) >= 15
    for d in got:
        jsonschema.validate(d, SCHEMA)
    assert (("har/status/tls", b"online") in [(t, p) for t, p, _ in msgs])
    assert USERS["agent"] not in err


def test_wrong_password_is_one_log_line_and_retried(secure, tiny_program: Path, recording: Path,  # noqa: ANN001
                                                    tmp_path: Path) -> None:
    broker, tls_port, ca = secure
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    proc = run_agent("--watch", f"replay:{recording}", "--mqtt", f"mqtts://127.0.0.1:{tls_port}",
                     "--ca-file", str(ca), "--model", str(tiny_program), "--username", "agent",
                     "--password-file", str(wrong), "--agent-id", "wrongpw")
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stderr], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90  # model loading is slow on a busy machine
        while sum("refused the connection" in ln for ln in seen) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        assert proc.poll() is None, "".join(seen)  # still running: it retries rather than giving up
    finally:
        proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    time.sleep(0.2)
    while not lines.empty():
        seen.append(lines.get())
    err = "".join(seen)
    refusals = [ln.rstrip("\n") for ln in seen if "refused the connection" in ln]
    assert len(refusals) >= 2, err
    assert refusals[0] == (f"ERROR l2mu.agent.mqtt: broker 127.0.0.1:{tls_port} refused the connection: "
                           "Not authorized (check the user name and password); retrying")
    assert "Traceback" not in err and "not-the-password" not in err


def test_acl_denial_is_logged_and_the_agent_carries_on(secure, tiny_program: Path, recording: Path) -> None:  # noqa: ANN001
    broker, tls_port, ca = secure
    sub = reader(broker)
    try:
        proc = run_agent("--watch", f"replay:{recording}", "--mqtt", f"mqtts://127.0.0.1:{tls_port}",
                         "--ca-file", str(ca), "--model", str(tiny_program), "--speed", "0", "--agent-id", "acl",
                         env={"L2MU_MQTT_USERNAME": "restricted", "L2MU_MQTT_PASSWORD": USERS["restricted"]})
        _, err = proc.communicate(timeout=120)
        msgs = sub.drain(1.0)
    finally:
        sub.close()
    assert proc.returncode == 0, err
    denied = [ln for ln in err.splitlines() if "denied" in ln]
    assert denied == ["ERROR l2mu.agent.mqtt: broker denied publishing to har/activity/secured (Not authorized); "
                      "check its ACL"]
    assert not [p for t, p, retained in msgs if t == "har/activity/secured" and not retained]
    assert ("har/status/acl", b"online") in [(t, p) for t, p, _ in msgs]  # what the ACL allows still works


def test_untrusted_server_certificate_is_a_one_line_error(secure, tiny_program: Path) -> None:  # noqa: ANN001
    _, tls_port, _ = secure
    proc = run_agent("--watch", "demo", "--model", str(tiny_program), "--mqtt", f"mqtts://127.0.0.1:{tls_port}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: TLS with MQTT broker 127.0.0.1:{tls_port} failed"), err
