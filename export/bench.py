"""`l2mu-agent bench`: one model in four runtimes — window and step latency, file size, resident memory.

Runtimes: `eager` (the snnTorch network in PyTorch, as trained: the paper's eager baseline),
`executorch_fp32` and `executorch_int8` (the agent's programs, XNNPACK) and `onnxruntime` (the same
graphs exported to ONNX, the paper's deployment runtime; comparison only).

Method: every runtime runs on one thread (PyTorch intra-op threads, ExecuTorch's pool, ONNX Runtime's
intra-op pool, all 1; ONNX Runtime with every graph optimisation on). Inputs are seeded standard-normal
normalised samples: every operation is dense, so latency does not depend on the values. Each call is
timed alone (perf_counter_ns) after a warm-up that is not recorded; `step` feeds its own output state
back, restarting from zero every window as the agent's chains do. `rss_mb` is the resident set of a
fresh process that imports only that runtime and loads only that model (both methods, each run once).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l2mu.model.metadata import ModelMetadata, read_metadata

RUNTIMES = ("eager", "executorch_fp32", "executorch_int8", "onnxruntime")
THREADS = 1


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (a file it needs is missing and cannot be made)."""


@dataclass
class BenchFiles:
    checkpoint: Path
    fp32: Path
    int8: Path
    onnx: Path  # the window graph; the step graph is beside it (l2mu.export.onnx_export.onnx_paths)
    built: list[str]  # which of them were made for this run


def int8_path(fp32: Path) -> Path:
    return fp32.with_name(f"{fp32.stem}-int8.pte")


def locate_files(fp32: Path, workdir: Path, checkpoint: Path | None = None, int8: Path | None = None,
                 data: Path | None = None, log: Callable[[str], None] = print) -> BenchFiles:
    """The model in every runtime's format: beside the fp32 program (NAME.pt, NAME-int8.pte, NAME.onnx),
    given explicitly, or made now into `workdir` (int8 needs `data` for calibration)."""
    from l2mu.export.onnx_export import onnx_paths
    from l2mu.model.checkpoint import load_checkpoint

    checkpoint = checkpoint or fp32.with_suffix(".pt")
    if not checkpoint.is_file():
        raise BenchError(f"{checkpoint}: the eager checkpoint is needed beside the program (or give --checkpoint)")
    built = []
    ckpt = None
    int8 = int8 or int8_path(fp32)
    if not int8.is_file():
        if data is None:
            raise BenchError(f"{int8}: no int8 program; make one with `l2mu-agent export --quantize int8 --data DIR "
                             f"--checkpoint {checkpoint} --out {int8}`, or give --data to make it now")
        from l2mu.export.data import calibration_windows
        from l2mu.export.executorch_export import export_program

        ckpt = load_checkpoint(checkpoint)
        int8 = workdir / int8.name
        log(f"making {int8} (int8, calibrated on training subjects; minutes) ...")
        export_program(ckpt, int8, quantize="int8", calibration=calibration_windows(data, ckpt.metadata))
        built.append("executorch_int8")
    onnx = fp32.with_suffix(".onnx")
    if not all(p.is_file() for p in onnx_paths(onnx).values()):
        from l2mu.export.onnx_export import export_onnx

        ckpt = ckpt or load_checkpoint(checkpoint)
        onnx = workdir / onnx.name
        log(f"making {onnx} and its step graph ...")
        export_onnx(ckpt, onnx)
        built.append("onnxruntime")
    return BenchFiles(checkpoint, fp32, int8, onnx, built)


def _summary(seconds: list[float], scale: float) -> tuple[float, float]:
    a = np.asarray(seconds) * scale
    return round(float(np.median(a)), 4), round(float(np.percentile(a, 99)), 4)


def time_runtime(window_fn: Callable[[np.ndarray], object], step_fn: Callable[[np.ndarray, Any], tuple[Any, Any]],
                 initial_state: Callable[[], Any], windows: np.ndarray, samples: np.ndarray, n_windows: int,
                 n_steps: int, warmup_windows: int, warmup_steps: int) -> dict:
    """Median and p99 of `window_fn` (ms) and `step_fn` (µs), each call timed alone, warm-up excluded."""
    clock = time.perf_counter_ns
    w_times: list[float] = []
    for i in range(warmup_windows + n_windows):
        x = windows[i % len(windows)]
        t0 = clock()
        window_fn(x)
        if i >= warmup_windows:
            w_times.append((clock() - t0) * 1e-9)
    s_times: list[float] = []
    window_len = windows.shape[1]
    state = initial_state()
    for i in range(warmup_steps + n_steps):
        if i % window_len == 0:
            state = initial_state()  # the agent's chains restart at every window start
        x = samples[i % len(samples)]
        t0 = clock()
        _, state = step_fn(x, state)
        if i >= warmup_steps:
            s_times.append((clock() - t0) * 1e-9)
    w_med, w_p99 = _summary(w_times, 1e3)
    s_med, s_p99 = _summary(s_times, 1e6)
    return {"window_ms_median": w_med, "window_ms_p99": w_p99, "step_us_median": s_med, "step_us_p99": s_p99}


def _eager(files: BenchFiles) -> tuple[Callable, Callable, Callable, int]:
    import torch

    from l2mu.model.checkpoint import load_checkpoint

    net = load_checkpoint(files.checkpoint).model.eval()
    net.graph_mode = False  # the snnTorch modules, as trained

    def window(x: np.ndarray) -> object:
        with torch.inference_mode():
            return net(torch.from_numpy(x)[None])

    def step(x: np.ndarray, state: list) -> tuple[object, list]:
        with torch.inference_mode():
            out, *new_state = net.step(torch.from_numpy(x)[None], *state)
        return out, new_state

    return window, step, lambda: net.initial_state(1), files.checkpoint.stat().st_size


def _executorch(path: Path) -> tuple[Callable, Callable, Callable, int]:
    from l2mu.agent.runtime import ExecuTorchClassifier

    clf = ExecuTorchClassifier(path)
    return clf.counts, clf.step, clf.initial_state, path.stat().st_size


def _onnxruntime(files: BenchFiles, meta: ModelMetadata) -> tuple[Callable, Callable, Callable, int]:
    from l2mu.export.onnx_export import OnnxRuntimeModel

    ort_model = OnnxRuntimeModel(files.onnx, meta, threads=THREADS)
    return ort_model.counts, ort_model.step, ort_model.initial_state, ort_model.file_bytes()


# Each child imports one runtime and loads one model, runs both methods once, prints its memory.
_RSS_CHILD = {
    "eager": """
import sys, torch
torch.set_num_threads(1)
from l2mu.model.checkpoint import load_checkpoint
ck = load_checkpoint(sys.argv[1]); net = ck.model.eval(); m = ck.metadata
with torch.inference_mode():
    net(torch.zeros(1, m.window_samples, len(m.channels)))
    net.step(torch.zeros(1, len(m.channels)), *net.initial_state(1))
""",
    "executorch": """
import sys
from l2mu.agent.runtime import ExecuTorchClassifier, single_threaded_kernels
single_threaded_kernels()
ExecuTorchClassifier(sys.argv[1])  # loads both methods and runs each once
""",
    "onnxruntime": """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
for p in sys.argv[1:]:
    s = ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
    s.run(None, {i.name: np.zeros(i.shape, np.float32) for i in s.get_inputs()})
""",
}
_RSS_REPORT = """
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("RSS_KB", status["VmRSS"].split()[0], status["VmHWM"].split()[0])
"""


def rss_mb(kind: str, args: list[str]) -> dict:
    """Resident memory (MB) of a fresh process that loaded only this runtime and model: now and at its peak."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD[kind] + _RSS_REPORT, *args], capture_output=True,
                          text=True, timeout=300, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RSS_KB")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"memory probe for {kind} failed: {proc.stderr.strip().splitlines()[-1:]}")
    now, peak = (int(v) / 1024 for v in line.split()[1:])
    return {"rss_mb": round(now, 1), "rss_peak_mb": round(peak, 1)}


def _machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 2)}


def _versions() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), **{p: version(p) for p in ("torch", "executorch", "onnxruntime")}}


def run_model_bench(model: str | None = None, repeats: int = 500, checkpoint: Path | None = None,
                    int8: Path | None = None, data: Path | None = None, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict:
    """The benchmark of one model (a bundled name or a .pte path): one JSON-ready dict."""
    from l2mu.agent.runtime import resolve_model, single_threaded_kernels

    if repeats < 1:
        raise ValueError("--repeats must be at least 1")
    single_threaded_kernels()  # before any program loads (the pool cannot be resized afterwards)
    import torch

    torch.set_num_threads(THREADS)
    fp32 = resolve_model(model)
    meta = read_metadata(fp32)
    machine = _machine()
    n_windows, n_steps = repeats, 10 * repeats
    warm_w, warm_s = max(10, repeats // 10), max(100, n_steps // 10)
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((16, meta.window_samples, len(meta.channels))).astype(np.float32)
    samples = rng.standard_normal((4 * meta.window_samples, len(meta.channels))).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="l2mu-bench-") as tmp:
        files = locate_files(fp32, Path(tmp), checkpoint, int8, data, log)
        for path in (files.fp32, files.int8):
            read_metadata(path)  # a corrupt or truncated program is refused before anything runs
        results: dict[str, dict] = {}
        for kind in RUNTIMES:
            log(f"timing {kind} ...")
            if kind == "eager":
                window_fn, step_fn, init, size = _eager(files)
            elif kind == "onnxruntime":
                window_fn, step_fn, init, size = _onnxruntime(files, meta)
            else:
                window_fn, step_fn, init, size = _executorch(files.fp32 if kind == "executorch_fp32" else files.int8)
            timing = time_runtime(window_fn, step_fn, init, windows, samples, n_windows, n_steps, warm_w, warm_s)
            results[kind] = {**timing, "file_bytes": size}
        from l2mu.export.onnx_export import onnx_paths

        probes = {"eager": ("eager", [str(files.checkpoint)]),
                  "executorch_fp32": ("executorch", [str(files.fp32)]),
                  "executorch_int8": ("executorch", [str(files.int8)]),
                  "onnxruntime": ("onnxruntime", [str(p) for p in onnx_paths(files.onnx).values()])}
        for kind, (child, args) in probes.items():
            log(f"measuring the memory of {kind} ...")
            results[kind].update(rss_mb(child, args))
        file_names = {"checkpoint": files.checkpoint.name, "executorch_fp32": files.fp32.name,
                      "executorch_int8": files.int8.name,
                      "onnxruntime": [p.name for p in onnx_paths(files.onnx).values()],
                      "made_for_this_run": files.built}
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    et, ort, eager = (results[k]["window_ms_median"] for k in ("executorch_fp32", "onnxruntime", "eager"))
    return {
        "model": meta.name,
        "window_samples": meta.window_samples,
        "channels": len(meta.channels),
        "threads": THREADS,
        "repeats": {"windows": n_windows, "steps": n_steps, "warmup_windows": warm_w, "warmup_steps": warm_s},
        "inputs": f"seeded standard-normal normalised samples (seed {seed})",
        "rss_mb": results["executorch_fp32"]["rss_mb"],
        "runtimes": results,
        "ratios": {
            "executorch_fp32_window_over_onnxruntime": round(et / ort, 4),
            "executorch_fp32_window_over_eager": round(et / eager, 4),
        },
        "files": file_names,
        "machine": machine,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
