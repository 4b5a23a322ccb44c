"""`l2mu-agent bench`: one model in four runtimes — window and step latency, file size, resident memory.

Runtimes: `eager` (the snnTorch network in PyTorch, as trained: the paper's eager baseline),
`executorch_fp32` (the program through ExecuTorch's own Python bindings, which link libtorch),
`executorch_native` (the same program through the agent's native runner, l2mu.agent.native: what the
agent runs) and `onnxruntime` (the same graphs exported to ONNX, the paper's deployment runtime;
comparison only).

Method: every runtime runs on one thread (PyTorch intra-op threads, ExecuTorch's pool, ONNX Runtime's
intra-op pool, all 1; ONNX Runtime with every graph optimisation on). Inputs are seeded standard-normal
normalised samples: every operation is dense, so latency does not depend on the values. Each call is
timed alone (perf_counter_ns) after a warm-up that is not recorded; `step` feeds its own output state
back, restarting from zero every window as the agent's chains do. `rss_mb` is the resident set of a
fresh process that imports only that runtime and loads only that model (both methods, each run once).

`executorch_native` adds what the agent's ticks do: `batched_step_us_per_chain` — one `step` call
advancing B chains (B = 1, 8, 64), its median divided by B, through the agent's own `ChainPool` (gather,
step, scatter) — and `cold_start_ms`, a fresh process's time from its start until the model is loaded
and both methods ran once (interpreter and imports included; `load_ms` is the load alone).
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

from l2mu.agent.runtime import counts_by_chunks
from l2mu.model.metadata import ModelMetadata, read_metadata

RUNTIMES = ("eager", "executorch_fp32", "executorch_native", "onnxruntime")
THREADS = 1
BATCHES = (1, 8, 64)


class BenchError(RuntimeError):
    """The benchmark cannot run as asked (a file it needs is missing and cannot be made)."""


@dataclass
class BenchFiles:
    checkpoint: Path
    fp32: Path
    onnx: Path  # the window graph; the step graph is beside it (l2mu.export.onnx_export.onnx_paths)
    built: list[str]  # which of them were made for this run


def locate_files(fp32: Path, workdir: Path, checkpoint: Path | None = None,
                 log: Callable[[str], None] = print) -> BenchFiles:
    """The model in every runtime's format: beside the program (NAME.pt, NAME.onnx), given explicitly, or
    (the ONNX graphs) made now into `workdir`."""
    from l2mu.export.onnx_export import onnx_paths
    from l2mu.model.checkpoint import load_checkpoint

    checkpoint = checkpoint or fp32.with_suffix(".pt")
    if not checkpoint.is_file():
        raise BenchError(f"{checkpoint}: the eager checkpoint is needed beside the program (or give --checkpoint)")
    built = []
    onnx = fp32.with_suffix(".onnx")
    if not all(p.is_file() for p in onnx_paths(onnx).values()):
        from l2mu.export.onnx_export import export_onnx

        onnx = workdir / onnx.name
        log(f"making {onnx} and its step graph ...")
        export_onnx(load_checkpoint(checkpoint), onnx)
        built.append("onnxruntime")
    return BenchFiles(checkpoint, fp32, onnx, built)


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
    # snnTorch's own neuron modules, step by step: the paper's eager baseline (not the fast training path)
    net.graph_mode, net.use_snntorch = False, True

    def window(x: np.ndarray) -> object:
        with torch.inference_mode():
            return net(torch.from_numpy(x)[None])

    def step(x: np.ndarray, state: list) -> tuple[object, list]:
        with torch.inference_mode():
            out, *new_state = net.step(torch.from_numpy(x)[None], *state)
        return out, new_state

    return window, step, lambda: net.initial_state(1), files.checkpoint.stat().st_size


class PyBindingsProgram:
    """The program through ExecuTorch's Python bindings (torch tensors in and out), for comparison."""

    def __init__(self, path: Path) -> None:
        import torch

        from l2mu.agent.runtime import native_stderr_silenced

        meta = read_metadata(path)
        self._torch = torch
        self._sizes = [p["size"] for p in meta.state]
        self._chunk = meta.chunk_samples
        with native_stderr_silenced():
            runtime = executorch_bindings()
            self._program = runtime._load_program(str(path),
                                                  program_verification=runtime.Verification.InternalConsistency)
            self._chunk_method = self._program.load_method("chunk")
            self._step = self._program.load_method("step")

    def counts(self, window: np.ndarray) -> np.ndarray:
        x = self._torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
        return counts_by_chunks(self._chunk_method, x, self._chunk, self.initial_state()).numpy()

    def initial_state(self) -> list:
        return [self._torch.zeros(1, n) for n in self._sizes]

    def step(self, sample: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        new_state = self._step([self._torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))[None], *state])
        return new_state[0].numpy()[0], list(new_state)


def executorch_bindings():  # noqa: ANN201 - a native extension module
    """ExecuTorch's C++ runtime's Python bindings with XNNPACK on one thread, without the compiler.

    `executorch.runtime` and `portable_lib` import `executorch.exir` (the whole export toolchain and torchao)
    on the way; the bindings themselves need only libtorch. The pool cannot be resized under loaded programs
    (it corrupts memory), so the resize happens before the first program is loaded."""
    import torch  # noqa: F401 - the bindings link libtorch, which this loads
    from executorch.extension.pybindings import _C

    from l2mu.agent.runtime import native_stderr_silenced

    with native_stderr_silenced():  # the runtime announces the resize on stderr
        if _C._threadpool_get_thread_count() != 1:
            _C._unsafe_reset_threadpool(1)
    return _C


def _executorch(path: Path) -> tuple[Callable, Callable, Callable, int]:
    prog = PyBindingsProgram(path)
    return prog.counts, prog.step, prog.initial_state, path.stat().st_size


def _native(path: Path) -> tuple[Callable, Callable, Callable, int]:
    from l2mu.agent.runtime import ExecuTorchClassifier

    clf = ExecuTorchClassifier(path)
    return clf.counts, clf.step, clf.initial_state, path.stat().st_size


def time_batched_steps(path: Path, samples: np.ndarray, n_calls: int, warmup: int,
                       batches: tuple[int, ...] = BATCHES) -> dict:
    """Median and p99 µs per chain of one batched `step` through the agent's ChainPool, for each B."""
    from l2mu.agent.runtime import ExecuTorchClassifier
    from l2mu.agent.streaming import ChainPool

    clf = ExecuTorchClassifier(path)
    window_len = clf.meta.window_samples
    clock = time.perf_counter_ns
    out: dict[str, dict] = {}
    for b in batches:
        pool = ChainPool(clf, rows=b)
        rows = [pool.acquire() for _ in range(b)]
        times: list[float] = []
        for i in range(warmup + n_calls):
            if i % window_len == 0:  # every chain restarts at its window start, as in the agent
                for r in rows:
                    pool.release(r)
                rows = [pool.acquire() for _ in range(b)]
            x = np.ascontiguousarray(np.resize(samples[i % len(samples)], (b, samples.shape[1])))
            t0 = clock()
            pool.step(rows, x)
            if i >= warmup:
                times.append((clock() - t0) * 1e-9 / b)
        med, p99 = _summary(times, 1e6)
        out[str(b)] = {"median": med, "p99": p99}
    return out


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
import sys, numpy as np
from l2mu.export.bench import PyBindingsProgram
from l2mu.model.metadata import read_metadata
m = read_metadata(sys.argv[1]); p = PyBindingsProgram(sys.argv[1])
p.counts(np.zeros((m.window_samples, len(m.channels)), np.float32))
p.step(np.zeros(len(m.channels), np.float32), p.initial_state())
""",
    "native": """
import sys, time
from l2mu.agent.runtime import ExecuTorchClassifier
t0 = time.monotonic()
ExecuTorchClassifier(sys.argv[1])  # loads and plans both methods and runs each once
print("LOAD_MS", (time.monotonic() - t0) * 1e3)
print("READY_AT", time.monotonic())
""",
    "onnxruntime": """
import sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.inter_op_num_threads = 1
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
for p in sys.argv[1:]:
    s = ort.InferenceSession(p, o, providers=["CPUExecutionProvider"])
    # A symbolic dimension (the step graph's batch) is named, not sized: one chain.
    s.run(None, {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                 for i in s.get_inputs()})
""",
}
_RSS_REPORT = """
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print("RSS_KB", status["VmRSS"].split()[0], status["VmHWM"].split()[0])
"""


def rss_mb(kind: str, args: list[str]) -> dict:
    """Resident memory (MB) of a fresh process that loaded only this runtime and model: now and at its peak
    (and, for the native runner, its cold start: process start → model loaded and run, and the load alone)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    t0 = time.monotonic()  # CLOCK_MONOTONIC: one clock for this process and the child
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD[kind] + _RSS_REPORT, *args], capture_output=True,
                          text=True, timeout=300, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RSS_KB")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"memory probe for {kind} failed: {proc.stderr.strip().splitlines()[-1:]}")
    now, peak = (int(v) / 1024 for v in line.split()[1:])
    result = {"rss_mb": round(now, 1), "rss_peak_mb": round(peak, 1)}
    load = next((ln for ln in proc.stdout.splitlines() if ln.startswith("LOAD_MS")), None)
    if load is not None:
        # The child's own clock stops before it measures its memory; the parent's includes interpreter start-up.
        result["load_ms"] = round(float(load.split()[1]), 2)
        result["cold_start_ms"] = round(_started_to_loaded_ms(proc.stdout, t0), 1)
    return result


def _started_to_loaded_ms(stdout: str, t0: float) -> float:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("READY_AT"))
    return (float(line.split()[1]) - t0) * 1e3


def _machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_1m_start": round(os.getloadavg()[0], 2)}


def _versions() -> dict:
    from importlib.metadata import version

    return {"python": platform.python_version(), **{p: version(p) for p in ("torch", "executorch", "onnxruntime")}}


def run_model_bench(model: str | None = None, repeats: int = 500, checkpoint: Path | None = None, seed: int = 0,
                    log: Callable[[str], None] = print) -> dict:
    """The benchmark of one model (a bundled name or a .pte path): one JSON-ready dict."""
    from l2mu.agent.runtime import resolve_model

    if repeats < 1:
        raise ValueError("--repeats must be at least 1")
    executorch_bindings()  # its pool on one thread before any program loads (it cannot be resized afterwards)
    import torch

    torch.set_num_threads(THREADS)
    fp32 = resolve_model(model)
    meta = read_metadata(fp32)  # a corrupt or truncated program is refused before anything runs
    machine = _machine()
    n_windows, n_steps = repeats, 10 * repeats
    warm_w, warm_s = max(10, repeats // 10), max(100, n_steps // 10)
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((16, meta.window_samples, len(meta.channels))).astype(np.float32)
    samples = rng.standard_normal((4 * meta.window_samples, len(meta.channels))).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="l2mu-bench-") as tmp:
        files = locate_files(fp32, Path(tmp), checkpoint, log)
        results: dict[str, dict] = {}
        for kind in RUNTIMES:
            log(f"timing {kind} ...")
            if kind == "eager":
                window_fn, step_fn, init, size = _eager(files)
            elif kind == "onnxruntime":
                window_fn, step_fn, init, size = _onnxruntime(files, meta)
            elif kind == "executorch_native":
                window_fn, step_fn, init, size = _native(files.fp32)
            else:
                window_fn, step_fn, init, size = _executorch(files.fp32)
            timing = time_runtime(window_fn, step_fn, init, windows, samples, n_windows, n_steps, warm_w, warm_s)
            results[kind] = {**timing, "file_bytes": size}
        log("timing executorch_native batched steps ...")
        results["executorch_native"]["batched_step_us_per_chain"] = time_batched_steps(
            files.fp32, samples, n_calls=max(20, n_steps // 10), warmup=max(10, warm_s // 10))
        from l2mu.export.onnx_export import onnx_paths

        probes = {"eager": ("eager", [str(files.checkpoint)]),
                  "executorch_fp32": ("executorch", [str(files.fp32)]),
                  "executorch_native": ("native", [str(files.fp32)]),
                  "onnxruntime": ("onnxruntime", [str(p) for p in onnx_paths(files.onnx).values()])}
        for kind, (child, args) in probes.items():
            log(f"measuring the memory of {kind} ...")
            results[kind].update(rss_mb(child, args))
        file_names = {"checkpoint": files.checkpoint.name, "executorch": files.fp32.name,
                      "onnxruntime": [p.name for p in onnx_paths(files.onnx).values()],
                      "made_for_this_run": files.built}
    machine["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    native, pyb, ort, eager = (results[k]["window_ms_median"]
                               for k in ("executorch_native", "executorch_fp32", "onnxruntime", "eager"))
    return {
        "model": meta.name,
        "window_samples": meta.window_samples,
        "channels": len(meta.channels),
        "threads": THREADS,
        "repeats": {"windows": n_windows, "steps": n_steps, "warmup_windows": warm_w, "warmup_steps": warm_s},
        "inputs": f"seeded standard-normal normalised samples (seed {seed})",
        "rss_mb": results["executorch_native"]["rss_mb"],
        "runtimes": results,
        "ratios": {
            "executorch_native_window_over_onnxruntime": round(native / ort, 4),
            "executorch_fp32_window_over_onnxruntime": round(pyb / ort, 4),
            "executorch_fp32_window_over_eager": round(pyb / eager, 4),
        },
        "int8": "no int8 program: removed, it cannot pay here (MODEL.md, \"int8\")",
        "files": file_names,
        "machine": machine,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
