"""`l2mu-agent bench load`: one report per watch count, and one-line errors for bad options."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli_command


def test_bench_load_command_reports_every_count(tiny_program: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "load.json", tmp_path / "load.png"
    proc = subprocess.run([*cli_command(), "bench", "load", "--watches", "1", "--watches", "3", "--seconds", "6",
                           "--model", str(tiny_program), "--json", "--out", str(out), "--plot", str(png)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result == json.loads(out.read_text())
    assert [r["watches"] for r in result["results"]] == [1, 3]
    for r in result["results"]:
        assert r["decisions"] >= 3 * r["watches"] and r["decisions_lost"] == 0 and r["acked_out_of_order"] == 0
        assert r["samples_dropped"] == 0 and r["samples_received"] > 0 and r["rss_mb"] > 0
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"] <= r["latency_ms_max"]
        # The simulated firmware did some of the work, and the agent's share is what is left of the process's.
        assert 0 < r["firmware_cpu_percent"] < r["cpu_percent"]
        assert r["agent_cpu_percent"] == pytest.approx(r["cpu_percent"] - r["firmware_cpu_percent"], abs=0.2)
    assert result["transport"].startswith("in-process notifications") and "PUBACK" in result["latency"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args,message", [
    (["--watches", "0"], "--watches: 0 is not a number of watches ≥ 1"),
    (["--watches", "8", "--mix", "polar@52,fitbit@20"], "protocol must be one of"),
    (["--watches", "8", "--mix", "bangle@25"], "no watch kind in bangle@25 streams acc+gyro"),
])
def test_bench_load_bad_options_are_one_line_errors(args: list[str], message: str, tiny_program: Path) -> None:
    proc = subprocess.run([*cli_command(), "bench", "load", *args, "--model", str(tiny_program)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr
