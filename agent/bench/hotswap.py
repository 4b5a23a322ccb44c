"""Hot model swap, measured on the real `l2mu-agent run` process: how long a SIGHUP takes to show in the decisions,
and whether any decision came late or went missing.

Not part of the test suite (tests/integration/test_hotswap.py checks the behaviour). The agent runs as a user
starts it — `l2mu-agent run --watch demo` in real time against a mosquitto of its own — with `--model` naming a
copy of a bundled program. Every few seconds another bundled program is copied over that file and the agent gets
SIGHUP: alternately hand7-acc-gyro and hand8-acc-gyro (the same grid: windows in flight finish on the old model),
and at the end hand8-acc and back (other sensors: the windows restart). For each swap it reports

- `load_ms`: the agent's own figure for loading and checking the program (its log line),
- `sighup_to_new_s`: SIGHUP → the first decision of the new program at the subscriber,
- `old_after_sighup`: decisions of the old program still arriving after the SIGHUP (windows in flight),
- `latency_ms`: for the decisions around the swap, arrival at the subscriber − the window's end on the wall clock,
  against the same figure for all other decisions (`steady_latency_ms`): a decision the swap delayed shows here,
- `window_end_steps_s`: spacing of the windows across the swap (1 s: none missing).

`python -m l2mu.agent.bench.hotswap [--swaps 8] [--every 4] --out bench/hotswap.json`
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

RELOADED_RE = re.compile(r"model reloaded in (?P<ms>\d+) ms")


def install(name: str, program: Path) -> None:
    from l2mu.agent.runtime import resolve_model

    src = resolve_model(name)
    program.write_bytes(src.read_bytes())
    program.with_suffix(".json").write_bytes(src.with_suffix(".json").read_bytes())


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def measure(swaps: int, every_s: float) -> dict:
    import paho.mqtt.client as mqtt

    from l2mu.agent.broker import LocalBroker

    plan = [("hand7-acc-gyro" if i % 2 == 0 else "hand8-acc-gyro", "same grid") for i in range(swaps)]
    last = plan[-1][0] if plan else "hand8-acc-gyro"
    plan += [("hand8-acc", "other sensors"), (last, "other sensors")]
    got: queue.Queue[tuple[float, dict]] = queue.Queue()
    with tempfile.TemporaryDirectory() as tmp, LocalBroker(prefer="mosquitto") as broker:
        program = Path(tmp) / "current.pte"
        install("hand8-acc-gyro", program)
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_connect = lambda c, *_: c.subscribe("har/activity/demo", qos=1)
        sub.on_message = lambda c, u, m: None if m.retain else got.put((time.time(), json.loads(m.payload)))
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        proc = subprocess.Popen([sys.executable, "-m", "l2mu.agent", "run", "--watch", "demo", "--mqtt", broker.url,
                                 "--model", str(program), "--agent-id", "hotswap-bench"],
                                stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(ln.rstrip("\n") for ln in proc.stderr), daemon=True)
        reader.start()
        decisions: list[tuple[float, dict]] = []

        def collect(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                try:
                    decisions.append(got.get(timeout=left))
                except queue.Empty:
                    return

        try:
            while not decisions:
                collect(1.0)
                if proc.poll() is not None:
                    raise RuntimeError("the agent ended:\n" + "\n".join(log[-20:]))
            collect(every_s)
            hups = []
            for name, kind in plan:
                install(name, program)
                hups.append((time.time(), name, kind, len(decisions)))
                proc.send_signal(signal.SIGHUP)
                collect(every_s)
            collect(2.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            sub.loop_stop()
            sub.disconnect()
            reader.join(5)
    loads = [int(m["ms"]) for ln in log if (m := RELOADED_RE.search(ln))]
    if len(loads) != len(plan) or any(ln.startswith("ERROR") for ln in log):
        raise RuntimeError("not every reload succeeded:\n" + "\n".join(log[-20:]))
    seqs = [d["seq"] for _, d in decisions]
    around: set[int] = set()
    report_swaps = []
    for i, ((t_hup, name, kind, first_index), load_ms) in enumerate(zip(hups, loads, strict=True)):
        end = hups[i + 1][3] if i + 1 < len(hups) else len(decisions)
        after = decisions[first_index:end]
        new_at = next(k for k, (_, d) in enumerate(after) if d["model"] == name)
        window = after[: new_at + 2]  # the old model's windows in flight, the new model's first two
        around |= {first_index + k for k in range(len(window))}
        prev = decisions[first_index - 1][1] if first_index else None
        steps = [round(b["window_end"] - a["window_end"], 3)
                 for a, b in zip([prev, *[d for _, d in window]], [d for _, d in window], strict=False)
                 if a is not None]
        report_swaps.append({
            "to": name, "kind": kind, "load_ms": load_ms,
            "sighup_to_new_s": round(after[new_at][0] - t_hup, 3), "old_after_sighup": new_at,
            "latency_ms": [round((t - d["window_end"]) * 1000, 1) for t, d in window],
            "window_end_steps_s": steps,
        })
    steady = [round((t - d["window_end"]) * 1000, 1) for k, (t, d) in enumerate(decisions) if k not in around]
    same = [s for s in report_swaps if s["kind"] == "same grid"]
    return {
        "decisions": len(decisions), "seq_contiguous": seqs == list(range(seqs[0], seqs[0] + len(seqs))),
        "swaps": report_swaps,
        "steady_latency_ms": {"p50": percentile(steady, 0.5), "p99": percentile(steady, 0.99), "max": max(steady)},
        "same_grid": {
            "load_ms_median": statistics.median(s["load_ms"] for s in same),
            "sighup_to_new_s_median": round(statistics.median(s["sighup_to_new_s"] for s in same), 3),
            "sighup_to_new_s_max": max(s["sighup_to_new_s"] for s in same),
            "latency_ms_max_around_swaps": max(v for s in same for v in s["latency_ms"]),
            "window_end_steps_s": sorted({v for s in same for v in s["window_end_steps_s"]}),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--swaps", type=int, default=8, help="same-grid swaps (two other-sensor swaps follow)")
    ap.add_argument("--every", type=float, default=4.0, help="seconds between swaps")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = measure(args.swaps, args.every)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
