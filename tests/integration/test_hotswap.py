"""`l2mu-agent run` takes a new program on SIGHUP (`systemctl reload`) against a real mosquitto, and publishes
only strict JSON whatever a recording holds (NaN, infinite and absurd samples)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import jsonschema

from l2mu.agent.recording import Sample, read_recording, recording_from_wisdm, write_recording
from l2mu.agent.runtime import resolve_model
from tests.support.mqtt import SCHEMA, Subscriber, run_agent
from tests.support.sdnotify import receive


def strict(payload: bytes) -> dict:
    def refuse(name: str) -> float:
        raise AssertionError(f"not JSON: {name} in {payload!r}")

    return json.loads(payload, parse_constant=refuse)


class Log:
    """The agent's stderr, read while it runs."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(line.rstrip("\n") for line in stream),
                                        daemon=True)
        self._thread.start()

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((ln for ln in list(self.lines) if text in ln), None)
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no log line with {text!r}:\n" + "\n".join(self.lines[-20:]))

    def join(self) -> None:
        self._thread.join(10)


def install(name: str, program: Path) -> None:
    """Copy a bundled program over `program` in place, as a user replacing the file would."""
    src = resolve_model(name)
    program.write_bytes(src.read_bytes())
    program.with_suffix(".json").write_bytes(src.with_suffix(".json").read_bytes())


def take_until(sub: Subscriber, topic: str, got: list[tuple[float, dict]], condition, timeout: float = 20) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, payload, _ = sub.take(timeout=max(0.1, deadline - time.monotonic()), topic=topic, live=True)
        got.append((time.monotonic(), strict(payload)))
        if condition(got):
            return
    raise AssertionError(f"waited {timeout} s; got {[d['model'] for _, d in got]}")


def test_sighup_swaps_the_model_without_losing_a_decision(mosquitto, wisdm_root: Path, tmp_path: Path,  # noqa: ANN001
                                                         notify_socket: tuple[socket.socket, str]) -> None:
    sock, notify_path = notify_socket
    recording = tmp_path / "swap.csv.gz"
    write_recording(recording, recording_from_wisdm(wisdm_root, 1601, "FGR", seconds=16))  # 48 s at 4×: 12 s
    program = tmp_path / "current.pte"
    install("hand8-acc-gyro", program)
    topic = "har/activity/swap"
    sub = Subscriber(mosquitto.port, topic)
    config_topic = "homeassistant/sensor/l2mu_hotswap_swap_activity/config"
    ha = Subscriber(mosquitto.port, config_topic)
    proc = run_agent("--watch", f"replay:{recording}", "--mqtt", mosquitto.url, "--model", str(program),
                     "--speed", "4", "--agent-id", "hotswap", "--ha-discovery",
                     env={"PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": notify_path})
    log = Log(proc.stderr)
    got: list[tuple[float, dict]] = []
    try:
        take_until(sub, topic, got, lambda g: len(g) >= 3, timeout=60)
        install("hand7-acc-gyro", program)  # another model on the same grid, over the file `--model` names
        t_hup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        take_until(sub, topic, got, lambda g: g[-1][1]["model"] == "hand7-acc-gyro")
        t_new = got[-1][0]
        take_until(sub, topic, got, lambda g: sum(d["model"] == "hand7-acc-gyro" for _, d in g) >= 3)
        program.write_bytes(program.read_bytes()[:4096])  # a truncated copy: refused, hand7 goes on
        proc.send_signal(signal.SIGHUP)
        error = log.wait_for("model reload failed")
        n = len(got)
        take_until(sub, topic, got, lambda g: len(g) >= n + 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        time.sleep(0.3)
        got += [(time.monotonic(), strict(p)) for t, p, _ in sub.drain(0.5) if t == topic]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
        ha.close()
        log.join()
    # Home Assistant learns the new class list: the config is published again after the swap.
    configs = [json.loads(p) for t, p, _ in ha.drain(0.3) if t == config_topic]
    assert [len(c["options"]) for c in configs][-1] == 7 and 8 in [len(c["options"]) for c in configs]
    assert configs[-1]["device"]["model"] == "hand7-acc-gyro"
    decisions = [d for _, d in got]
    for d in decisions:
        jsonschema.validate(d, SCHEMA)
    seqs = [d["seq"] for d in decisions]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous across both reloads
    steps = {round(b["window_end"] - a["window_end"], 2) for a, b in zip(decisions, decisions[1:], strict=False)}
    assert steps == {0.25}  # one decision per recorded second at 4×: none lost, none late
    models = [d["model"] for d in decisions]
    k = models.index("hand7-acc-gyro")
    assert models == ["hand8-acc-gyro"] * k + ["hand7-acc-gyro"] * (len(models) - k)
    assert len({d["model_id"] for d in decisions[:k]}) == 1 and len({d["model_id"] for d in decisions[k:]}) == 1
    assert decisions[0]["model_id"] != decisions[-1]["model_id"]
    assert t_new - t_hup < 5
    errors = [ln for ln in log.lines if ln.startswith("ERROR")]
    assert errors == [error] and "still running hand7-acc-gyro" in error and "does not match its metadata" in error
    assert any("model reloaded in" in ln for ln in log.lines)
    assert not any("Traceback" in ln for ln in log.lines)
    # systemd's reload protocol: RELOADING=1 (with MONOTONIC_USEC) then READY=1, for each SIGHUP.
    sent = [line for _, lines in receive(sock, 0.5) for line in lines]
    marks = [line for line in sent if line in ("READY=1", "RELOADING=1")]
    assert marks == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1"], sent
    assert any(line.startswith("MONOTONIC_USEC=") for line in sent)


def in_process_windows(samples: list[Sample]) -> list[tuple[float, float]]:
    from l2mu.agent.bench.stream_accuracy import MemorySource
    from l2mu.agent.daemon import Agent, NullSink
    from l2mu.agent.runtime import ExecuTorchClassifier

    out: list[tuple[float, float]] = []
    agent = Agent([MemorySource(samples)], ExecuTorchClassifier(resolve_model("hand8-acc-gyro")), NullSink(),
                  on_decision=lambda p, _t: out.append((p["window_start"], p["window_end"])))
    session = agent.sessions[0]
    session.wall0, session.t0 = 0.0, 0.0
    for s in session.source.samples:
        agent.handle_sample(session, s)
    return out


BAD_VALUES = [(float("nan"), 0.0, 9.8), (0.0, float("inf"), 0.0), (1e30, 0.0, 0.0), (0.0, 0.0, -1e30)]


def test_recording_with_non_finite_and_absurd_samples_publishes_only_strict_json(
        mosquitto, wisdm_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    samples = recording_from_wisdm(wisdm_root, 1601, "FG", seconds=12)
    t0 = samples[0].t
    bad_times = []
    for i, values in enumerate(BAD_VALUES):
        j = next(k for k, s in enumerate(samples) if s.t - t0 > 4 + 5 * i)
        s = samples[j]
        samples[j] = Sample(s.t, s.sensor, values, s.label)
        bad_times.append(s.t)
    recording = tmp_path / "bad.csv"
    write_recording(recording, samples)
    assert "nan" in recording.read_text() and len(read_recording(recording)) == len(samples)  # replay reads it
    topic = "har/activity/bad"
    sub = Subscriber(mosquitto.port, topic)
    try:
        proc = run_agent("--watch", f"replay:{recording}", "--mqtt", mosquitto.url, "--model", "hand8-acc-gyro",
                         "--speed", "0", "--agent-id", "badvalues", "--raw-scores")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        time.sleep(0.3)
        msgs = sub.drain(0.5)
    finally:
        sub.close()
    published = [strict(p) for t, p, _ in msgs if t == topic]
    # The same recording through the agent's pipeline in process, on the recording's own clock, places the windows.
    expected = in_process_windows(read_recording(recording))
    assert len(published) == len(expected) > 5
    shift = published[0]["window_start"] - expected[0][0]  # wall clock of the first sample − its recorded time
    for d, (start, end) in zip(published, expected, strict=True):
        jsonschema.validate(d, SCHEMA)
        assert abs(d["window_start"] - shift - start) < 2e-3 and abs(d["window_end"] - shift - end) < 2e-3
        assert not any(start <= t <= end for t in bad_times), (d, bad_times)
    assert [d["seq"] for d in published] == list(range(len(published)))
    warnings = [ln for ln in err.splitlines() if "no watch can produce" in ln]
    assert len(warnings) == len(BAD_VALUES) and all(ln.startswith("WARNING") for ln in warnings)
    assert f"{len(BAD_VALUES)} invalid samples dropped" in err
