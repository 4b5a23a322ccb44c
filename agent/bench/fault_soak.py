"""Soak: the agent with several virtual watches for minutes, a fault every 30 s; RSS growth and decisions reported.

Not part of the test suite (scripts/soak runs it). The agent is the load rig (`l2mu.agent.bench.load`, its own
process) publishing through a delaying TCP proxy (`l2mu.agent.sim.slowlink`) to a mosquitto that keeps sessions
on disk; a subscriber with a persistent session counts what arrives. Faults rotate through:

- `broker-restart`: mosquitto stopped for a few seconds and started again;
- `garbage`: 200 random frames (up to 200 bytes) into one watch's notifications;
- `link-drop`: one watch's link down for 5 s (its notifications in that time are lost), then reconnected;
- `slow-broker`: every byte to and from the broker delayed by 4 s for 12 s.

The report (one JSON object): the agent's RSS over time (start, end, peak, growth after the first minute),
decisions made, acknowledged and received (unique `seq`s per watch; none may be missing), dropped samples,
decode errors, the faults with their times, and the agent's own final report.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import paho.mqtt.client as mqtt

from l2mu.agent.broker import LocalBroker, free_port
from l2mu.agent.sim.slowlink import DelayProxy

FAULTS = ("broker-restart", "garbage", "link-drop", "slow-broker")
PREFIX = "soak"


class DecisionCounter:
    """A consumer with a persistent session: every decision's (watch, seq), duplicates counted."""

    def __init__(self, port: int) -> None:
        self.seen: dict[str, set[int]] = defaultdict(set)
        self.messages = 0
        self.duplicates = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="l2mu-soak-counter", clean_session=False)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/activity/#", qos=1)
        self.client.on_message = self._message
        self.client.reconnect_delay_set(min_delay=0.2, max_delay=1)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _message(self, client, userdata, msg) -> None:  # noqa: ANN001
        if msg.retain:
            return
        d = json.loads(msg.payload)
        self.messages += 1
        if d["seq"] in self.seen[d["watch"]]:
            self.duplicates += 1
        self.seen[d["watch"]].add(d["seq"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class AgentProcess:
    """The rig process: commands on stdin, answers and the final report on stdout."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.answers: queue.Queue[dict] = queue.Queue()
        self.report: dict | None = None
        self.log: list[str] = []
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                d = json.loads(line)
                if "event" in d:
                    self.answers.put(d)
                else:
                    self.report = d

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def ask(self, command: str, timeout: float = 30) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.answers.get(timeout=timeout)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            return next(int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("VmRSS:"))


def soak(minutes: float, watches: int, fault_every_s: float, model: str | None, seed: int) -> dict:
    if minutes <= 0 or watches < 2 or fault_every_s < 10:
        raise ValueError("--minutes > 0, --watches ≥ 2 and --fault-every ≥ 10 s, please")
    seconds = minutes * 60
    store = tempfile.TemporaryDirectory(prefix="l2mu-soak-")
    broker = LocalBroker(prefer="mosquitto", port=free_port(),
                         extra_config=f"persistence true\npersistence_location {store.name}/\nautosave_interval 1\n")
    broker.start()
    proxy = DelayProxy(broker.port).start()
    counter = DecisionCounter(broker.port)
    cmd = [sys.executable, "-m", "l2mu.agent.bench.load", "--watches", str(watches), "--seconds", str(seconds + 60),
           "--mqtt", proxy.url, "--commands", "--topic-prefix", PREFIX, "--agent-id", "soak", "--seed", str(seed)]
    if model:
        cmd += ["--model", model]
    agent = AgentProcess(cmd)
    faults: list[dict] = []
    rss: list[tuple[float, float]] = []
    try:
        ready = agent.answers.get(timeout=300)
        if ready.get("event") != "ready":
            raise RuntimeError(f"the agent did not start: {agent.log[-3:]}")
        ids: list[str] = ready["watches"]
        t0 = time.monotonic()
        next_fault, n = t0 + fault_every_s, 0
        while (now := time.monotonic()) < t0 + seconds:
            if agent.proc.poll() is not None:
                raise RuntimeError(f"the agent died: {agent.log[-3:]}")
            if not rss or now - t0 - rss[-1][0] >= 10:
                rss.append((round(now - t0, 1), round(agent.rss_mb(), 1)))
            if now >= next_fault:
                kind, target = FAULTS[n % len(FAULTS)], ids[n % len(ids)]
                faults.append({"t": round(now - t0, 1), "fault": kind,
                               "watch": target if kind in ("garbage", "link-drop") else None})
                inject(kind, target, agent, broker, proxy, seed + n)
                n += 1
                next_fault += fault_every_s
            time.sleep(0.5)
        rss.append((round(time.monotonic() - t0, 1), round(agent.rss_mb(), 1)))
        deadline = time.monotonic() + 60  # what the last fault held back is delivered before the count
        while time.monotonic() < deadline:
            s = agent.ask("status")
            if s["queued"] == 0 and s["acked"] == s["made"]:
                break
            time.sleep(0.5)
        agent.ask("stop")
        agent.proc.wait(120)
        time.sleep(2)  # the last decisions reach the counter
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
        counter.close()
        proxy.stop()
        broker.stop()
        store.cleanup()
    return summary(agent, counter, rss, faults, minutes, watches)


def inject(kind: str, watch: str, agent: AgentProcess, broker: LocalBroker, proxy: DelayProxy, seed: int) -> None:
    if kind == "broker-restart":
        broker.stop()
        time.sleep(3)
        broker.start()
    elif kind == "garbage":
        agent.ask(f"garbage {watch} 200 random")
    elif kind == "link-drop":
        agent.ask(f"drop {watch} 5")
    elif kind == "slow-broker":
        proxy.delay_s = 4.0  # each PUBACK 8 s after its PUBLISH: past the agent's 5 s "slow broker" mark
        time.sleep(12)
        proxy.delay_s = 0.0


def summary(agent: AgentProcess, counter: DecisionCounter, rss: list[tuple[float, float]], faults: list[dict],
            minutes: float, watches: int) -> dict:
    report = agent.report or {}
    per = report.get("per_watch", {})
    made = {w: v["decisions"] for w, v in per.items()}
    missing = {w: sorted(set(range(n)) - counter.seen.get(w, set())) for w, n in made.items()}
    after_warmup = next((mb for t, mb in rss if t >= 60), rss[0][1] if rss else None)
    levels: dict[str, int] = defaultdict(int)
    for line in agent.log:
        levels[line.split(" ", 1)[0]] += 1
    return {
        "minutes": minutes,
        "watches": watches,
        "faults": faults,
        "rss_mb": {"start": rss[0][1] if rss else None, "after_first_minute": after_warmup,
                   "end": rss[-1][1] if rss else None, "peak": max((mb for _, mb in rss), default=None),
                   "growth_after_first_minute": round(rss[-1][1] - after_warmup, 1) if rss else None,
                   "series": rss},
        "decisions": {"made": sum(made.values()), "acked": report.get("decisions_acked"),
                      "received_unique": sum(len(counter.seen.get(w, ())) for w in made),
                      "missing": sum(len(m) for m in missing.values()), "duplicates": counter.duplicates},
        "missing_by_watch": {w: m[:20] for w, m in missing.items() if m},
        "samples_dropped": report.get("samples_dropped"),
        "decode_errors": report.get("decode_errors"),
        "agent_exit_status": agent.proc.returncode,
        "log_lines": dict(levels),
        "log_warnings_and_errors": [ln for ln in agent.log if ln.startswith(("WARNING", "ERROR"))][:50],
        "agent": {k: v for k, v in report.items() if k != "per_watch"},
        "per_watch": per,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--watches", type=int, default=8)
    p.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults")
    p.add_argument("--model", help="bundled model name or .pte (default: the bundled default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="also write the JSON report here")
    a = p.parse_args(argv)
    try:
        result = soak(a.minutes, a.watches, a.fault_every, a.model, a.seed)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    print(text)
    ok = result["decisions"]["missing"] == 0 and result["agent_exit_status"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
