"""Memory soak: the real `l2mu-agent run` process for half an hour or more, its resident memory sampled throughout.

Not part of the test suite (`scripts/soak` runs it). The agent runs exactly as a user starts it —
`l2mu-agent run --watch demo --speed S`, with the local broker and the echo subscriber it starts
itself — with the bundled recording replayed S times faster than real time, so half an hour holds
as many decisions as S half-hours of one watch. Every few seconds the soak reads the agent's
VmRSS from /proc; at the end it fits a straight line to the samples after the warm-up (the model,
the broker session and the allocator's pools settle in the first minutes) and reports its slope
in MB per hour. It also reads the echo's lines: every `seq` from 0 to the last must have arrived.

The report (one JSON object) and a plot of RSS over time are written with `--out FILE.json`
(FILE.png beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

MAX_SLOPE_MB_PER_HOUR = 1.0
ECHO_RE = re.compile(r"^(?P<prefix>\S+)/activity/(?P<watch>\S+)\s+seq\s+(?P<seq>\d+)\s")
DECISIONS_RE = re.compile(r"^(?P<watch>\S+): (?P<n>\d+) decisions")


class SoakError(RuntimeError):
    pass


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) / 1024 for ln in fh if ln.startswith("VmRSS:"))


def slope_mb_per_hour(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    if len(series) < 3:
        return None
    n = len(series)
    mt = sum(t for t, _ in series) / n
    mm = sum(m for _, m in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    if var == 0:
        return None
    return sum((t - mt) * (m - mm) for t, m in series) / var * 3600


class RunProcess:
    """`l2mu-agent run …` with its stdout (the echo) and stderr (the log) read as they come."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "l2mu.agent", "run", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.seqs: dict[str, set[int]] = {}
        self.echoed = 0
        self.log: list[str] = []
        self.first_echo = threading.Event()
        self.cpu_percent: float | None = None
        self._readers = [threading.Thread(target=self._out, daemon=True), threading.Thread(target=self._err,
                                                                                             daemon=True)]
        for reader in self._readers:
            reader.start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            m = ECHO_RE.match(line)
            if m:
                self.seqs.setdefault(m["watch"], set()).add(int(m["seq"]))
                self.echoed += 1
                self.first_echo.set()

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    def cpu_s(self) -> float:
        """User + system CPU seconds the agent used so far."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for reader in self._readers:
            reader.join(10)
        return self.proc.returncode


def soak(minutes: float, speed: float, sample_every_s: float, warmup_minutes: float, model: str | None) -> dict:
    if minutes <= 0 or speed <= 0 or sample_every_s <= 0 or not 0 <= warmup_minutes < minutes:
        raise SoakError("--minutes > 0, --speed > 0, --sample-every > 0 and 0 ≤ --warmup-minutes < --minutes, please")
    args = ["--watch", "demo", "--speed", f"{speed:g}"]
    if model:
        args += ["--model", model]
    agent = RunProcess(args)
    series: list[tuple[float, float]] = []
    started = time.monotonic()
    try:
        if not agent.first_echo.wait(300):
            raise SoakError(f"the agent printed no decision within 300 s: {agent.log[-3:]}")
        t0 = time.monotonic()
        while (now := time.monotonic()) < t0 + minutes * 60:
            if agent.proc.poll() is not None:
                raise SoakError(f"the agent died (exit status {agent.proc.returncode}): {agent.log[-3:]}")
            with contextlib.suppress(OSError, StopIteration):
                series.append((round(now - t0, 1), round(rss_mb(agent.proc.pid), 2)))
            time.sleep(max(0.0, t0 + len(series) * sample_every_s - time.monotonic()))
        with contextlib.suppress(OSError):
            agent.cpu_percent = round(100 * agent.cpu_s() / (time.monotonic() - started), 1)
    finally:
        status = agent.stop()
    return summary(agent, status, series, minutes, speed, sample_every_s, warmup_minutes, model)


def summary(agent: RunProcess, status: int, series: list[tuple[float, float]], minutes: float, speed: float,
            sample_every_s: float, warmup_minutes: float, model: str | None) -> dict:
    after = [(t, m) for t, m in series if t >= warmup_minutes * 60]
    slope = slope_mb_per_hour(after)
    made = {m["watch"]: int(m["n"]) for ln in agent.log if (m := DECISIONS_RE.match(ln))}
    missing = {w: n - len(agent.seqs.get(w, set()) & set(range(n))) for w, n in made.items()}
    return {
        "command": "l2mu-agent run --watch demo --speed " + f"{speed:g}" + (f" --model {model}" if model else ""),
        "what": "the real `run` process with its own local broker and echo subscriber; VmRSS of that process",
        "minutes": minutes,
        "speed": speed,
        "sample_every_s": sample_every_s,
        "warmup_minutes": warmup_minutes,
        "rss_mb": {
            "start": series[0][1] if series else None,
            "after_warmup": after[0][1] if after else None,
            "end": series[-1][1] if series else None,
            "peak": max((m for _, m in series), default=None),
            "slope_after_warmup_mb_per_hour": None if slope is None else round(slope, 3),
            "limit_mb_per_hour": MAX_SLOPE_MB_PER_HOUR,
        },
        "decisions": {"made": sum(made.values()), "echoed": agent.echoed,
                      "echoed_unique": sum(len(v) for v in agent.seqs.values()), "missing": sum(missing.values())},
        "cpu_percent": agent.cpu_percent,
        "agent_exit_status": status,
        "log_warnings_and_errors": [ln for ln in agent.log if ln.startswith(("WARNING", "ERROR"))][:50],
        "series": series,
    }


def passed(report: dict) -> bool:
    slope = report["rss_mb"]["slope_after_warmup_mb_per_hour"]
    return (slope is not None and slope <= MAX_SLOPE_MB_PER_HOUR and report["decisions"]["missing"] == 0
            and report["agent_exit_status"] == 0)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s / 60 for s, _ in report["series"]]
    mb = [m for _, m in report["series"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, mb, lw=1, label="VmRSS of `l2mu-agent run`")
    warm = report["warmup_minutes"]
    after = [(s, m) for s, m in report["series"] if s >= warm * 60]
    slope = report["rss_mb"]["slope_after_warmup_mb_per_hour"]
    if after and slope is not None:
        mt = sum(s for s, _ in after) / len(after)
        mm = sum(m for _, m in after) / len(after)
        xs = [after[0][0], after[-1][0]]
        ax.plot([x / 60 for x in xs], [mm + (x - mt) * slope / 3600 for x in xs], "r--",
                label=f"fit after warm-up: {slope:+.2f} MB/h (limit {report['rss_mb']['limit_mb_per_hour']:g})")
    ax.axvline(warm, color="grey", ls=":", lw=1, label=f"end of warm-up ({warm:g} min)")
    ax.set(xlabel="minutes", ylabel="resident memory (MB)",
           title=f"{report['command']}: {report['decisions']['made']} decisions in {report['minutes']:g} min")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def dumps(report: dict) -> str:
    """Indented JSON, but one line per RSS sample: a half-hour series stays readable in a diff."""
    head = json.dumps({k: v for k, v in report.items() if k != "series"}, indent=2)
    rows = ",\n".join(f"    {json.dumps(list(s))}" for s in report["series"])
    return head[:-2] + ',\n  "series": [\n' + rows + "\n  ]\n}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--speed", type=float, default=20.0, help="replay speed of the demo recording")
    p.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--warmup-minutes", type=float, default=5.0, help="samples before this are left out of the fit")
    p.add_argument("--model", help="bundled model name or .pte (default: the bundled default)")
    p.add_argument("--out", type=Path, help="also write the JSON report here, and the plot beside it (.png)")
    a = p.parse_args(argv)
    try:
        report = soak(a.minutes, a.speed, a.sample_every, a.warmup_minutes, a.model)
    except SoakError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = dumps(report)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
        plot(report, a.out.with_suffix(".png"))
    print(text)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
