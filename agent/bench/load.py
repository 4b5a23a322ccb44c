"""`l2mu-agent bench load`: the whole agent under N virtual watches, and the rig the fault tests and the soak drive.

The rig is one agent process: the agent `run` builds (l2mu.agent.compose.build_agent: pipeline, model,
smoothing, MQTT publisher and outbox) with the bundled (or given) model, and N simulated watches
(l2mu.agent.sim.player): the firmware models the virtual BlueZ serves, streaming real WISDM data in
each protocol's wire format at its native rate, set up by the same handshake and feeding the same
bounded intake (l2mu.agent.intake) a live Bluetooth watch does, in real time. The transport is
in process (no BlueZ, no D-Bus), so the figures count the agent's work — and the simulated firmware's
encoding, which runs in the same process — but not the radio stack's.

Latency of a decision: the broker's PUBACK (paho's on_publish, QoS 1) minus the arrival time of the
newest sample the decision used — the one whose arrival completed its window. A sample's arrival is
the moment its notification fell due, so a busy event loop that delivers it late counts against the
agent. `samples_dropped`: samples that arrived but were shed by the intake (queue overflow, or older
than its age limit) instead of reaching the pipeline.

`run_load_bench` runs the rig once per watch count, each in a fresh process (so RSS and CPU are that
count's alone) against a mosquitto it starts on a free port. `python -m l2mu.agent.bench.load` is the
rig itself; with `--commands` it also takes faults on stdin (see `Rig.command`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from l2mu.agent.errors import KNOWN_ERRORS, UserError
from l2mu.agent.intake import NotificationSource
from l2mu.agent.settings import DEFAULTS, INFERENCE_KINDS, Settings
from l2mu.agent.sim.player import WatchSpecError

log = logging.getLogger(__name__)

TRANSPORT = ("in-process notifications (virtual watch firmware → the intake's set-up and bounded queue, as a live "
             "watch over bleak; no BlueZ/D-Bus; the firmware's encoding runs in the agent's process)")
LATENCY_DEFINITION = ("broker PUBACK time (paho on_publish, QoS 1) minus the arrival time of the newest sample the "
                      "decision used (the one that completed its window); arrival = when its notification fell due")
DROPPED_DEFINITION = "samples that arrived but never reached the pipeline (intake overflow, or shed as too old)"


class LoadBenchError(UserError):
    """Bench options that cannot work, or an agent under load that failed."""


@dataclass
class RigConfig:
    watches: int
    seconds: float
    mqtt: str
    model: str | None = None
    mix: Sequence[str] = ()
    recording: Path | None = None
    seed: int = 0
    queue_dir: Path | None = None
    max_queue: int = DEFAULTS.intake_queue
    max_age_s: float = DEFAULTS.intake_max_age_s
    agent_id: str = "loadbench"
    topic_prefix: str = DEFAULTS.topic_prefix
    slow_after_s: float = DEFAULTS.slow_broker_s
    commands: bool = False
    inference: str = DEFAULTS.inference

    def settings(self) -> Settings:
        """The agent's settings: `run`'s defaults but for what the rig sets (its broker, no echo)."""
        return DEFAULTS.replace(mqtt=self.mqtt, model=self.model, agent_id=self.agent_id,
                                topic_prefix=self.topic_prefix, queue_dir=self.queue_dir, echo=False,
                                intake_queue=self.max_queue, intake_max_age_s=self.max_age_s,
                                slow_broker_s=self.slow_after_s, inference=self.inference, drain_s=30.0)


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_busy_s() -> float:
    """Seconds all CPUs spent busy since boot (from /proc/stat), to tell what else ran during a measurement."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass
class Tally:
    """Decisions per watch: made (by the agent) and acknowledged (by the broker), with the latency of each."""

    made: Counter = field(default_factory=Counter)
    acked: Counter = field(default_factory=Counter)
    out_of_order: int = 0
    unmatched: int = 0
    arrivals: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)  # → (arrived, decided)

    def __post_init__(self) -> None:
        from l2mu.agent.sim.player import Histogram

        self.latency = Histogram()
        self.to_decision = Histogram()  # arrival → decision handed to the publisher: the pipeline and the model


class Rig:
    """One agent fed by virtual watches; see the module docstring."""

    def __init__(self, cfg: RigConfig) -> None:
        from l2mu.agent.compose import build_agent
        from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
        from l2mu.agent.sim.player import DEFAULT_MIX, build_watches, mix_for
        from l2mu.agent.sim.watches import MotionTape
        from l2mu.agent.sources import demo_recording

        if cfg.watches < 1:
            raise LoadBenchError(f"--watches must be ≥ 1, got {cfg.watches}")
        if cfg.seconds <= 0:
            raise LoadBenchError(f"--seconds must be > 0, got {cfg.seconds}")
        self.cfg = cfg
        self.classifier = ExecuTorchClassifier(resolve_model(cfg.model))
        self.kinds = mix_for(self.classifier.meta.sensors, cfg.mix or DEFAULT_MIX)
        tape = MotionTape.from_file(cfg.recording or demo_recording())
        # One extra second: every watch starts within the first second of the run.
        self.watches = build_watches(cfg.watches, self.kinds, tape, cfg.seed, max_queue=cfg.max_queue,
                                     max_age_s=cfg.max_age_s)
        self.sources: list[NotificationSource] = [w.source for w in self.watches]
        self.tally = Tally()
        # The agent `run` builds, from the same settings, fed by the virtual watches' intakes.
        self.app = build_agent(cfg.settings(), sources=self.sources, classifier=self.classifier,
                               on_decision=self._decided, on_delivered=self._delivered)
        self.publisher = self.app.sink
        self.agent = self.app.agent
        self.sessions = {s.source.watch_id: s for s in self.agent.sessions}
        self.player = None
        self._player_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- bookkeeping (agent thread / MQTT sender thread) --------------------------------------------

    def _decided(self, payload: dict, truth: str) -> None:
        # Called before the decision is handed to the publisher, so its ack can never come first.
        watch = payload["watch"]
        self.tally.arrivals[(watch, payload["seq"])] = (self.sessions[watch].arrival, time.monotonic())
        self.tally.made[watch] += 1

    def _delivered(self, topic: str, payload: str, acked_at: float) -> None:
        d = json.loads(payload)
        watch, seq = d["watch"], d["seq"]
        stamps = self.tally.arrivals.pop((watch, seq), None)
        if stamps is None:
            self.tally.unmatched += 1  # a redelivery, or a decision queued by an earlier run
            return
        if seq != self.tally.acked[watch]:
            self.tally.out_of_order += 1
        self.tally.acked[watch] += 1
        self.tally.latency.add(acked_at - stamps[0])
        self.tally.to_decision.add(stamps[1] - stamps[0])

    # --- faults on stdin ------------------------------------------------------------------------------

    def command(self, line: str) -> dict | None:
        """`garbage WATCH COUNT [short|random]`, `drop WATCH SECONDS`, `status`, `stop`; answers go to stdout."""
        words = line.split()
        if not words:
            return None
        try:
            if words[0] == "garbage" and len(words) in (3, 4):
                self.player.inject_garbage(words[1], int(words[2]), words[3] if len(words) == 4 else "short")
            elif words[0] == "drop" and len(words) == 3:
                self.player.drop_link(words[1], float(words[2]))
            elif words[0] == "status":
                return {"event": "status", "made": dict(self.tally.made), "acked": dict(self.tally.acked),
                        "queued": len(self.publisher.outbox)}
            elif words[0] == "stop":
                if self._player_task:
                    self._player_task.cancel()
            else:
                return {"event": "error", "error": f"unknown command {line.strip()!r}"}
        except (ValueError, WatchSpecError) as exc:
            return {"event": "error", "error": str(exc)}
        return {"event": "ok", "command": line.strip()}

    def _read_commands(self) -> None:
        for line in sys.stdin:
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            loop.call_soon_threadsafe(self._apply, line)
        if self._loop and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._apply, "stop")  # stdin closed: the driver went away

    def _apply(self, line: str) -> None:
        answer = self.command(line)
        if answer is not None:
            print(json.dumps(answer), flush=True)

    # --- the run --------------------------------------------------------------------------------------

    async def _run(self) -> dict:
        from l2mu.agent.sim.player import Player

        self._loop = asyncio.get_running_loop()
        self.player = Player(self.watches, self.cfg.seconds)
        rss = {"start": rss_mb(), "peak": 0.0}

        async def monitor() -> None:
            while True:
                rss["peak"] = max(rss["peak"], rss_mb())
                await asyncio.sleep(1.0)

        cpu0, wall0, busy0, fw0 = os.times(), time.monotonic(), cpu_busy_s(), self.firmware_cpu_s()
        load0 = os.getloadavg()
        self._player_task = asyncio.create_task(self.player.run())
        watcher = asyncio.create_task(monitor())
        if self.cfg.commands:
            threading.Thread(target=self._read_commands, name="commands", daemon=True).start()
        print(json.dumps({"event": "ready", "watches": [w.watch_id for w in self.watches]}), flush=True)
        try:
            await self.agent.run()  # ends when every source closed and drained, or on SIGTERM / SIGINT
        finally:
            self._player_task.cancel()
            await asyncio.gather(self._player_task, return_exceptions=True)
            watcher.cancel()
        cpu1, wall1, busy1, fw1 = os.times(), time.monotonic(), cpu_busy_s(), self.firmware_cpu_s()
        own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        wall = wall1 - wall0
        rss["peak"] = max(rss["peak"], rss_mb())
        return {"wall_s": wall, "cpu_s": own, "firmware_cpu_s": fw1 - fw0,
                "other_busy_s": max(0.0, busy1 - busy0 - own), "rss": rss,
                "loadavg": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()]}

    def firmware_cpu_s(self) -> float:
        """CPU the simulated watches' firmware used so far (tape reads and encoding, measured per block)."""
        return sum(w.firmware.firmware_cpu_s for w in self.watches)

    def run(self) -> dict:
        with self.app:
            self.app.connect()
            m = asyncio.run(self._run())
        # Closing delivered everything made (or, with a queue directory and no broker, kept it there): now count.
        return self.report(m)

    def report(self, m: dict) -> dict:
        t = self.tally
        sessions = {s.source.watch_id: s for s in self.agent.sessions}
        per_watch = {}
        for src in self.sources:
            session = sessions[src.watch_id]
            per_watch[src.watch_id] = {
                "kind": str(next(w.kind for w in self.watches if w.watch_id == src.watch_id)),
                "decisions": session.seq, "acked": t.acked[src.watch_id], "samples": src.feed.samples,
                "dropped": src.dropped, "decode_errors": src.feed.errors_total, "link_drops": src.link_drops,
                "gaps": session.aligner.counters.gaps, "samples_invalid": session.aligner.counters.samples_invalid,
            }
        decisions = sum(v["decisions"] for v in per_watch.values())
        acked = sum(v["acked"] for v in per_watch.values())
        wall = m["wall_s"]
        return {
            "watches": len(self.sources),
            "kinds": dict(Counter(str(w.kind) for w in self.watches)),
            "model": self.classifier.meta.name,
            "inference": self.agent.inference,
            "seconds": round(wall, 2),
            "latency_ms_p50": t.latency.percentile_ms(50),
            "latency_ms_p90": t.latency.percentile_ms(90),
            "latency_ms_p99": t.latency.percentile_ms(99),
            "latency_ms_max": round(t.latency.max_s * 1000, 1),
            "to_decision_ms_p50": t.to_decision.percentile_ms(50),
            "to_decision_ms_p99": t.to_decision.percentile_ms(99),
            "cpu_percent": round(100 * m["cpu_s"] / wall, 1),
            # The rig's process also runs the simulated firmware; what the agent itself used is the rest.
            "firmware_cpu_percent": round(100 * m["firmware_cpu_s"] / wall, 1),
            "agent_cpu_percent": round(100 * (m["cpu_s"] - m["firmware_cpu_s"]) / wall, 1),
            "rss_mb": round(m["rss"]["peak"], 1),
            "rss_mb_start": round(m["rss"]["start"], 1),
            "rss_mb_end": round(rss_mb(), 1),
            "samples_received": sum(v["samples"] for v in per_watch.values()),
            "samples_dropped": sum(v["dropped"] for v in per_watch.values()),
            "decode_errors": sum(v["decode_errors"] for v in per_watch.values()),
            # Windows the pipeline could not build: a time gap in a stream (lost or shed samples, or a late host
            # clock stamping MetaWear/InfiniTime samples on arrival) restarts its grid.
            "pipeline_gaps": sum(v["gaps"] for v in per_watch.values()),
            # Samples no watch can produce (NaN, infinite, beyond SENSOR_LIMITS): dropped, each run of them one gap.
            "samples_invalid": sum(v["samples_invalid"] for v in per_watch.values()),
            "decisions": decisions,
            "decisions_acked": acked,
            "decisions_lost": decisions - acked,
            "acked_out_of_order": t.out_of_order,
            "feed_lateness_ms_p99": self.player.lateness.percentile_ms(99) if self.player else None,
            "other_cpu_percent": round(100 * m["other_busy_s"] / wall, 1),
            "loadavg": m["loadavg"],
            "loadavg_end": m["loadavg_end"],
            "per_watch": per_watch,
        }


# --- the benchmark: one rig process per watch count ---------------------------------------------------


def parse_counts(values: Sequence[str]) -> list[int]:
    """`--watches 1,8 --watches 32` → [1, 8, 32]."""
    out = []
    for v in values:
        for part in v.replace(" ", ",").split(","):
            if not part:
                continue
            try:
                n = int(part)
            except ValueError:
                raise LoadBenchError(f"--watches: {part!r} is not a number of watches") from None
            if n < 1:
                raise LoadBenchError(f"--watches: {n} is not a number of watches ≥ 1")
            out.append(n)
    if not out:
        raise LoadBenchError("--watches: give at least one count")
    return out


def rig_command(n: int, seconds: float, mqtt: str, model: str | None, mix: Sequence[str], seed: int) -> list[str]:
    cmd = [sys.executable, "-m", "l2mu.agent.bench.load", "--watches", str(n), "--seconds", str(seconds),
           "--mqtt", mqtt, "--seed", str(seed)]
    if model:
        cmd += ["--model", model]
    if mix:
        cmd += ["--mix", ",".join(mix)]
    return cmd


def scheduling() -> str:
    """This process's CPU scheduling (the rig and the broker inherit it): `SCHED_OTHER nice 0`, `SCHED_FIFO 10`."""
    policy = os.sched_getscheduler(0)
    names = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR",
             os.SCHED_BATCH: "SCHED_BATCH", os.SCHED_IDLE: "SCHED_IDLE"}
    name = names.get(policy, str(policy))
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        return f"{name} {os.sched_getparam(0).sched_priority}"
    return f"{name} nice {os.nice(0)}"


def machine() -> dict:
    import platform

    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "platform": platform.platform()}


def run_load_bench(watches: Sequence[int], seconds: float, model: str | None = None, mix: Sequence[str] = (),
                   seed: int = 0, progress: bool = False) -> dict:
    """{"results": [one report per watch count], ...}: each count in its own agent process and broker."""
    from l2mu.agent.broker import LocalBroker

    results = []
    for n in watches:
        if progress:
            print(f"bench load: {n} watch(es) for {seconds:g} s …", file=sys.stderr, flush=True)
        with LocalBroker(prefer="mosquitto") as broker:
            try:
                proc = subprocess.run(rig_command(n, seconds, broker.url, model, mix, seed), capture_output=True,
                                      text=True, timeout=seconds + 600, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            except subprocess.TimeoutExpired:
                raise LoadBenchError(f"the agent with {n} watches did not finish within {seconds + 600:g} s") from None
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        report = json.loads(lines[-1]) if lines else {}
        if proc.returncode != 0 or "watches" not in report:
            tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            raise LoadBenchError(f"the agent with {n} watches failed: {tail[0]}")
        report.pop("per_watch", None)
        results.append(report)
    return {
        "results": results,
        "transport": TRANSPORT,
        "latency": LATENCY_DEFINITION,
        "samples_dropped": DROPPED_DEFINITION,
        "cpu_percent": "process CPU time (all threads) / wall time × 100 while the watches stream; one core = 100",
        "firmware_cpu_percent": ("the part of cpu_percent the simulated watches' firmware used (tape reads and "
                                 "encoding, thread CPU time measured around each block, the intake's work excluded)"),
        "agent_cpu_percent": "cpu_percent − firmware_cpu_percent: the agent's own work (intake, pipeline, model, MQTT)",
        "rss_mb": "peak resident set size while the watches stream (sampled each second)",
        "other_cpu_percent": "CPU time other processes used meanwhile (from /proc/stat), one core = 100",
        "machine": machine(),
        "scheduling": scheduling(),
        "broker": "mosquitto on 127.0.0.1, one per watch count",
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["results"], key=lambda r: r["watches"])
    n = [r["watches"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(n, [r["latency_ms_p50"] for r in rows], "o-", label="p50")
    left.plot(n, [r["latency_ms_p99"] for r in rows], "s-", label="p99")
    left.axhline(20, color="grey", ls="--", lw=1, label="floor: p99 < 20 ms")
    left.set(xlabel="watches", ylabel="sample → PUBACK latency (ms)", xscale="log", title="Latency")
    right.plot(n, [r.get("agent_cpu_percent", r["cpu_percent"]) for r in rows], "o-", color="tab:red", label="agent")
    right.plot(n, [r["cpu_percent"] for r in rows], "o--", color="tab:orange", lw=1,
               label="agent + simulated firmware (one process)")
    right.plot(n, [r.get("other_cpu_percent", 0) for r in rows], "x:", color="grey",
               label="all other processes (broker, …)")
    right.set(xlabel="watches", ylabel="CPU (% of one core)", xscale="log", title="CPU")
    for ax in (left, right):
        ax.set_xticks(n, [str(v) for v in n])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    loads = [r["loadavg"][0] for r in rows if r.get("loadavg")]
    fig.suptitle(f"l2mu-agent, model {rows[0].get('model', '')} ({rows[0].get('inference', '')} inference), virtual "
                 f"watches over in-process notifications; {result.get('scheduling', '')}, load average "
                 f"{min(loads, default=0):g}–{max(loads, default=0):g} on {result['machine']['cpus']} CPUs", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m l2mu.agent.bench.load",
                                description="The agent fed by virtual watches; prints one JSON report at the end.")
    p.add_argument("--watches", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--mqtt", required=True)
    p.add_argument("--model")
    p.add_argument("--mix", default="", help="comma-separated kinds, e.g. polar@52,l2mu@20")
    p.add_argument("--recording", type=Path)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--queue-dir", type=Path)
    p.add_argument("--max-age", type=float, default=DEFAULTS.intake_max_age_s)
    p.add_argument("--agent-id", default="loadbench")
    p.add_argument("--topic-prefix", default=DEFAULTS.topic_prefix)
    p.add_argument("--slow-after", type=float, default=DEFAULTS.slow_broker_s)
    p.add_argument("--commands", action="store_true", help="read faults from stdin (see Rig.command)")
    p.add_argument("--inference", choices=INFERENCE_KINDS, default=DEFAULTS.inference, help="the inference path")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        rig = Rig(RigConfig(a.watches, a.seconds, a.mqtt, a.model, [m for m in a.mix.split(",") if m], a.recording,
                            a.seed, a.queue_dir, max_age_s=a.max_age, agent_id=a.agent_id,
                            topic_prefix=a.topic_prefix, slow_after_s=a.slow_after, commands=a.commands,
                            inference=a.inference))
        report = rig.run()
    except KNOWN_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
