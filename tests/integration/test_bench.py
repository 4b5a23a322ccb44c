"""`l2mu-agent bench`: one JSON object covering all four runtimes (shape and sanity only, never timings)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from l2mu.export.bench import BATCHES, RUNTIMES
from tests.support.cli import cli_command

PER_RUNTIME = ("window_ms_median", "window_ms_p99", "step_us_median", "step_us_p99", "file_bytes", "rss_mb")


def test_bench_json_has_every_figure_for_every_runtime(tiny_program: Path, tiny_checkpoint: Path,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([*cli_command(), "bench", "--model", str(tiny_program), "--checkpoint", str(tiny_checkpoint),
                           "--repeats", "5", "--json", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == result
    assert set(result["runtimes"]) == set(RUNTIMES) == {"eager", "executorch_fp32", "executorch_native",
                                                        "onnxruntime"}
    for name, r in result["runtimes"].items():
        for key in PER_RUNTIME:
            assert isinstance(r[key], int | float) and r[key] > 0, (name, key, r[key])
        assert r["window_ms_p99"] >= r["window_ms_median"] and r["step_us_p99"] >= r["step_us_median"]
    runtimes = result["runtimes"]
    native = runtimes["executorch_native"]
    assert set(native["batched_step_us_per_chain"]) == {str(b) for b in BATCHES} == {"1", "8", "64"}
    for b in native["batched_step_us_per_chain"].values():
        assert 0 < b["median"] <= b["p99"]
    assert native["cold_start_ms"] > native["load_ms"] > 0  # a fresh interpreter's start-up comes on top
    assert result["rss_mb"] == native["rss_mb"]
    assert result["threads"] == 1 and result["repeats"] == {"windows": 5, "steps": 50, "warmup_windows": 10,
                                                            "warmup_steps": 100}
    assert runtimes["executorch_fp32"]["file_bytes"] == native["file_bytes"] == tiny_program.stat().st_size
    assert runtimes["eager"]["file_bytes"] == tiny_checkpoint.stat().st_size
    assert result["files"]["made_for_this_run"] == ["onnxruntime"]  # no ONNX beside tiny.pte: made on the fly
    assert result["model"] == "tiny-test"
    assert "removed" in result["int8"]


def test_bench_without_the_eager_checkpoint_says_what_is_missing(tiny_program: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.pte"
    lone.write_bytes(tiny_program.read_bytes())
    lone.with_suffix(".json").write_text(tiny_program.with_suffix(".json").read_text())
    proc = subprocess.run([*cli_command(), "bench", "--model", str(lone), "--json"], capture_output=True, text=True,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "lone.pt: the eager checkpoint is needed" in lines[0]
