"""The agent's native ExecuTorch runner: the C++ core through its binding, batched steps that change no count,
bad programs refused in one line, and an agent process that never maps libtorch."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from l2mu.agent.daemon import Agent, NullSink
from l2mu.agent.events import Sample
from l2mu.agent.recording import recording_from_wisdm, write_recording
from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
from l2mu.agent.streaming import ChainPool
from l2mu.model.metadata import ModelFileError, sha256_file
from tests.support.cli import cli_command
from tests.support.export import real_windows

HEAVY = ("torch", "snntorch", "onnx", "onnxruntime", "matplotlib", "scipy")


@pytest.fixture(scope="module")
def classifier(tiny_program: Path) -> ExecuTorchClassifier:
    return ExecuTorchClassifier(tiny_program)


def test_runner_loads_every_method_with_its_bounds(classifier: ExecuTorchClassifier) -> None:
    from l2mu.agent.native import _runner

    runner = _runner.Runner(str(classifier.path))
    meta = classifier.meta
    assert runner.method_names == ["chunk", "step", "window"]
    assert runner.is_loaded("chunk") and runner.is_loaded("step")  # no preload list: every method planned
    lazy = _runner.Runner(str(classifier.path), ["step"])
    assert lazy.is_loaded("step") and not lazy.is_loaded("chunk")
    chunk = [np.zeros((meta.chunk_samples, len(meta.channels)), np.float32),
             *[np.zeros((1, p["size"]), np.float32) for p in meta.state]]
    for got, want in zip(lazy.run("chunk", chunk), runner.run("chunk", chunk), strict=True):
        np.testing.assert_array_equal(got, want)
    assert lazy.is_loaded("chunk")  # planned on its first run
    assert runner.input_sizes("window") == [] and runner.output_sizes("window") == [[meta.window_samples]]
    np.testing.assert_array_equal(runner.run("window", [])[0], np.arange(meta.window_samples))
    assert runner.input_sizes("chunk") == [[meta.chunk_samples, len(meta.channels)]] + [[1, p["size"]]
                                                                                        for p in meta.state]
    assert runner.input_sizes("step") == [[256, len(meta.channels)]] + [[256, p["size"]] for p in meta.state]
    assert runner.output_sizes("step") == [[256, p["size"]] for p in meta.state]
    with pytest.raises(_runner.RunnerError, match="no method 'backward' \\(it has: chunk, step, window\\)"):
        runner.input_sizes("backward")
    with pytest.raises(_runner.RunnerError, match="does not fit"):  # more chains than the program's bound
        runner.run("step", [np.zeros((257, len(meta.channels)), np.float32),
                            *[np.zeros((257, p["size"]), np.float32) for p in meta.state]])
    with pytest.raises(TypeError):  # float64 is not silently copied: the binding reads float32 where it lies
        runner.run("chunk", [np.zeros((meta.chunk_samples, len(meta.channels))), *chunk[1:]])


@pytest.mark.parametrize("batch", [1, 2, 7, 64, 300])  # 300: more than one call's bound, split in two
def test_batched_steps_give_every_chain_exactly_its_window_counts(classifier: ExecuTorchClassifier,
                                                                     wisdm_root: Path, batch: int) -> None:
    windows = real_windows(wisdm_root, classifier.meta, n=batch)
    windows = np.resize(windows, (batch, *windows.shape[1:]))  # real windows, repeated up to the batch
    pool = ChainPool(classifier, rows=4)  # grows as chains arrive
    rows = [pool.acquire() for _ in range(batch)]
    order = np.random.default_rng(batch).permutation(batch)  # pool rows need not be in chain order
    counts = None
    for t in range(windows.shape[1]):
        counts = pool.step([rows[i] for i in order], np.ascontiguousarray(windows[order, t]))
    expected = np.stack([classifier.counts(w) for w in windows[order]])
    np.testing.assert_array_equal(counts, expected)


def test_step_into_caller_buffers_reads_the_state_before_writing_it(classifier: ExecuTorchClassifier,
                                                                     wisdm_root: Path) -> None:
    windows = real_windows(wisdm_root, classifier.meta, n=5)
    state = classifier.initial_state(5)
    for t in range(windows.shape[1]):
        counts, out = classifier.step_batch(np.ascontiguousarray(windows[:, t]), state, out=state)
        assert out is state
    np.testing.assert_array_equal(state[0], np.stack([classifier.counts(w) for w in windows]))
    np.testing.assert_array_equal(counts, state[0])


def test_step_rows_advances_only_the_named_rows_in_place(classifier: ExecuTorchClassifier, wisdm_root: Path) -> None:
    from l2mu.agent.native import _runner

    windows = real_windows(wisdm_root, classifier.meta, n=3)
    pools = [np.full((6, n), 7.0, np.float32) for n in classifier.part_sizes]  # rows 1, 4 and 5 stay untouched
    rows = [3, 0, 2]
    for p in pools:
        p[rows] = 0.0
    for t in range(windows.shape[1]):
        counts = classifier.step_rows(np.ascontiguousarray(windows[:, t]), pools, rows)
    expected = np.stack([classifier.counts(w) for w in windows])
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(pools[0][rows], expected)
    assert all((p[[1, 4, 5]] == 7.0).all() for p in pools)
    x = np.zeros((1, len(classifier.meta.channels)), np.float32)
    with pytest.raises(_runner.RunnerError, match="row 6 is outside the state pool of 6 rows"):
        classifier.step_rows(x, pools, [6])
    with pytest.raises(_runner.RunnerError, match="samples \\[1, 6\\] for 2 rows"):
        classifier.step_rows(x, pools, [0, 1])


# ---- bad programs: the same one-line errors as before the native runner ---------------------------------


def _with_matching_metadata(program: Path, data: bytes, tmp_path: Path, name: str) -> Path:
    """`data` as a program whose metadata checksum matches, so the runtime's own checks are what refuse it."""
    bad = tmp_path / name
    bad.write_bytes(data)
    meta = json.loads(program.with_suffix(".json").read_text())
    meta["program_sha256"] = sha256_file(bad)
    bad.with_suffix(".json").write_text(json.dumps(meta))
    return bad


@pytest.mark.parametrize("damage", ["truncated", "foreign", "empty"])
def test_damaged_or_foreign_program_gets_a_one_line_error(tiny_program: Path, tiny_checkpoint: Path,
                                                          wisdm_root: Path, tmp_path: Path, damage: str) -> None:
    data = {"truncated": tiny_program.read_bytes()[: tiny_program.stat().st_size // 2],
            "foreign": tiny_checkpoint.read_bytes(),  # a PyTorch checkpoint: a zip, not a flatbuffer
            "empty": b""}[damage]
    bad = _with_matching_metadata(tiny_program, data, tmp_path, f"{damage}.pte")
    with pytest.raises(ModelFileError, match=r"ExecuTorch cannot load it \(not an ExecuTorch program, or a damaged"):
        ExecuTorchClassifier(bad)
    proc = subprocess.run([*cli_command(), "evaluate", "--data", str(wisdm_root), "--model", str(bad)],
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}"), proc.stderr


def test_missing_program_gets_a_one_line_error(tmp_path: Path) -> None:
    from l2mu.agent.native import _runner

    with pytest.raises(ModelFileError, match="model file not found"):
        resolve_model(str(tmp_path / "gone.pte"))
    with pytest.raises(_runner.RunnerError, match="cannot open the program file"):
        _runner.Runner(str(tmp_path / "gone.pte"))


@pytest.mark.slow
def test_program_with_an_operator_outside_xnnpack_is_refused_not_run(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The runner ships no kernel library: a program that needs one must fail at load, in one line."""
    from l2mu.agent.runtime import native_stderr_silenced
    from l2mu.export.executorch_export import export_program
    from l2mu.model.checkpoint import load_checkpoint

    out = tmp_path / "portable.pte"
    with native_stderr_silenced():
        export_program(load_checkpoint(tiny_checkpoint), out, delegate=False)
    with pytest.raises(ModelFileError, match=r"method 'step' cannot be loaded \(OperatorMissing\)"):
        ExecuTorchClassifier(out)


# ---- the agent: batched ticks across watches decide as each watch alone did ----------------------------


PERIOD_S = 0.25  # a decision every 5 grid samples: two of the tiny model's 10-sample windows in flight


class UnpacedSource:
    """A recording played as fast as the agent takes it, through the agent's real main loop."""

    sensors_known = True

    def __init__(self, watch_id: str, samples: list[Sample]) -> None:
        self.watch_id = watch_id
        self.samples = samples
        self.speed = 0.0
        self.sensors = {s.sensor for s in samples}

    async def stream(self) -> AsyncIterator[Sample]:
        for s in self.samples:
            yield s


@pytest.fixture(scope="module")
def watches(wisdm_root: Path) -> dict[str, list[Sample]]:
    """Three real wearers, one with a 1.5 s hole (a gap: windows restart), of different lengths."""
    out = {}
    for subject, acts, hole in ((1601, "FGP", (15.0, 16.5)), (1603, "QRS", None), (1604, "FO", None)):
        samples = recording_from_wisdm(wisdm_root, subject, acts, 10.0)
        if hole:
            t0 = samples[0].t
            samples = [s for s in samples if not hole[0] <= s.t - t0 < hole[1]]
        out[f"w{subject}"] = samples
    return out


def _decisions_alone(clf: ExecuTorchClassifier, watch_id: str, samples: list[Sample]) -> list[tuple]:
    """The window path (the chunk method over each whole window), one watch at a time: the reference."""
    got: list[dict] = []
    agent = Agent([UnpacedSource(watch_id, samples)], clf, NullSink(), PERIOD_S,  # type: ignore[list-item]
                  on_decision=lambda p, _t: got.append(p), smoothing="none", inference="window")
    session = agent.sessions[0]
    session.wall0, session.t0 = 0.0, 0.0
    for s in samples:
        agent.handle_sample(session, s)
    return [(p["seq"], p["window_start"], p["window_end"], p["raw_activity"], p["scores"]) for p in got]


def test_agent_steps_all_watches_together_and_decides_as_each_alone(
        classifier: ExecuTorchClassifier, watches: dict[str, list[Sample]]) -> None:
    sizes: list[int] = []
    step_rows = classifier.step_rows

    def counting(samples, pools, rows):  # noqa: ANN001, ANN202
        sizes.append(len(samples))
        return step_rows(samples, pools, rows)

    got: dict[str, list[tuple]] = {w: [] for w in watches}
    sources = [UnpacedSource(w, s) for w, s in watches.items()]
    agent = Agent(sources, classifier, NullSink(), PERIOD_S, smoothing="none",  # type: ignore[arg-type]
                  on_decision=lambda p, _t: got[p["watch"]].append(
                      (p["seq"], p["window_start"], p["window_end"], p["raw_activity"], p["scores"])))
    for session in agent.sessions:
        session.wall0, session.t0 = 0.0, 0.0
    classifier.step_rows = counting  # type: ignore[method-assign]
    try:
        asyncio.run(agent.run())
    finally:
        del classifier.step_rows
    for watch, samples in watches.items():
        alone = _decisions_alone(classifier, watch, samples)
        assert len(alone) > 10
        assert got[watch] == alone, watch
    # The hole restarted that watch's windows: none spans it.
    t0 = watches["w1601"][0].t
    assert not any(start - t0 < 15.0 and end - t0 >= 16.5 for _, start, end, *_ in got["w1601"])
    # One call per tick advanced the chains of several watches (three watches × the windows each has in flight),
    # in far fewer calls than one per watch and grid sample.
    in_flight = math.ceil(classifier.meta.window_samples / round(PERIOD_S * classifier.meta.sample_rate_hz))
    assert in_flight == 2
    grid_samples = sum(s.aligner.counters.grid_samples for s in agent.sessions)
    assert max(sizes) == in_flight * len(watches) and len(sizes) < 0.6 * grid_samples


# ---- the agent process: no torch, no training or comparison stack --------------------------------------


def _maps_while_running(proc: subprocess.Popen) -> str:
    """The process's last readable memory map (it is read until the process ends)."""
    last = ""
    while proc.poll() is None:
        try:
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except (FileNotFoundError, ProcessLookupError):
            break
        last = maps or last  # a process that has exited but not been reaped has an empty map
        time.sleep(0.01)
    return last


def test_agent_run_maps_no_libtorch(mosquitto, wisdm_root: Path, tmp_path: Path) -> None:  # noqa: ANN001
    recs = [tmp_path / f"wearer-{subject}.csv.gz" for subject in (1601, 1603)]
    for rec, subject in zip(recs, (1601, 1603), strict=True):
        write_recording(rec, recording_from_wisdm(wisdm_root, subject, "FGPQ", 30.0))
    proc = subprocess.Popen([*cli_command(), "run", "--watch", f"replay:{recs[0]}", "--watch", f"replay:{recs[1]}",
                             "--speed", "0", "--mqtt", mosquitto.url, "--agent-id", "test-maps"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        maps = _maps_while_running(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "l2mu/agent/native/libexecutorch.so" in maps  # read while the model was loaded
    assert "libexecutorch_backend_xnnpack.so" in maps
    mapped = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    assert not [p for p in mapped if "libtorch" in p or "/torch/" in p or "libc10" in p]
    assert not [p for p in mapped if any(f"/{name}/" in p for name in HEAVY)], sorted(mapped)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["scan", "--help"], ["record", "--help"],
                                  ["virtual-watch", "--help"], ["doctor", "--help"]])
def test_agent_commands_import_no_heavy_package(args: list[str]) -> None:
    probe = ("import atexit, sys\n"
             f"atexit.register(lambda: print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules]))\n"
             "from l2mu.agent.cli import app\n"
             "app(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", proc.stdout[-500:]


def test_doctor_imports_no_heavy_package(tmp_path: Path) -> None:
    """doctor loads the model (through the native runner) and checks D-Bus, BlueZ and the broker for real."""
    probe = ("import atexit, sys\n"
             f"atexit.register(lambda: print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules]))\n"
             "from l2mu.agent.cli import app\n"
             "app(sys.argv[1:])\n")
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path}/no-bus"}
    proc = subprocess.run([sys.executable, "-c", probe, "doctor", "--mqtt", "mqtt://127.0.0.1:1"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1 and "model" in proc.stdout  # no bus, no broker: those checks fail, the model's not
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", proc.stdout[-500:]


def test_native_runner_needs_no_executorch_package(tmp_path: Path) -> None:
    """The extension carries the runtime libraries it links (RUNPATH $ORIGIN), not the executorch wheel's."""
    from l2mu.agent.native import _runner

    native = Path(_runner.__file__).parent
    for lib in ("libexecutorch.so", "libexecutorch_backend_xnnpack.so", "libexecutorch_threadpool.so"):
        assert (native / lib).is_file()
    readelf = shutil.which("readelf")
    if readelf:
        dyn = subprocess.run([readelf, "-d", _runner.__file__], capture_output=True, text=True).stdout
        assert "[$ORIGIN]" in dyn and "libtorch" not in dyn
