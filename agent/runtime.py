"""Load an exported model (.pte + metadata) and run it with the agent's native ExecuTorch runner.

No PyTorch here, nor the executorch Python package: the runner (l2mu.agent.native) links ExecuTorch's
C++ runtime and XNNPACK delegate, shipped inside this package."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l2mu.model.metadata import ModelFileError, ModelMetadata, read_metadata, sha256_file

DEFAULT_MODEL = "hand8-acc-gyro"
# The program's method without inputs whose output is as long as the window it was made for (checked
# against the metadata beside it).
WINDOW_METHOD = "window"
MODEL_ID_CHARS = 12  # hex digits of the program's SHA-256 in a decision's `model_id`


def bundled_dir() -> Path:
    """Where the bundled models live, in a source checkout and in an installed package alike."""
    from importlib import resources

    return Path(str(resources.files("l2mu.model") / "bundled"))


def bundled_models() -> list[str]:
    folder = bundled_dir()
    return sorted(p.stem for p in folder.glob("*.pte")) if folder.is_dir() else []


def resolve_model(name_or_path: str | None) -> Path:
    """A bundled model's name, or a path to a .pte (its .json beside it)."""
    name_or_path = name_or_path or DEFAULT_MODEL
    path = Path(name_or_path)
    if path.suffix == ".pte" or path.exists():
        if not path.is_file():
            raise ModelFileError(f"{path}: model file not found")
        return path
    candidate = bundled_dir() / f"{name_or_path}.pte"
    if candidate.is_file():
        return candidate
    known = ", ".join(bundled_models()) or "none"
    raise ModelFileError(f"unknown model {name_or_path!r} (bundled: {known}; or give a path to a .pte)")


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Loading a program makes the runtime log each failure on fd 2 (and XNNPACK probe the CPU there):
    noise in a service log. Failures still surface as exceptions, which callers turn into one-line errors."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def native_runner():  # noqa: ANN201 - a native extension module
    """The agent's own ExecuTorch runner (l2mu.agent.native), or a one-line error naming the fix."""
    try:
        from l2mu.agent.native import _runner
    except ImportError as exc:
        raise ModelFileError(f"the native ExecuTorch runner is not built ({exc}); run ./scripts/setup") from exc
    return _runner


@dataclass
class Decision:
    index: int
    confidence: float
    probabilities: np.ndarray
    counts: np.ndarray


class ExecuTorchClassifier:
    """An exported program in the native runner: `chunk` (one chain through `chunk_samples` normalised
    samples; `counts` runs a whole window [T, C] through it → spike counts per class) and `step` (normalised
    samples [B, C] and each chain's state → counts so far [B, K] and the new state, for B independent chains
    in one call). A state is a list of arrays [B, n], one per part of the metadata's `state` layout, the
    counts first. XNNPACK runs on the calling thread."""

    def __init__(self, program_path: Path) -> None:
        self.path = Path(program_path)
        self.meta: ModelMetadata = read_metadata(self.path)
        if (not self.meta.state or self.meta.state[0].get("name") != "counts" or "offset" not in self.meta.state[0]
                or self.meta.step_batch_max < 1 or self.meta.chunk_samples < 1
                or self.meta.window_samples % self.meta.chunk_samples):
            raise ModelFileError(f"{self.path}: exported by an older l2mu-agent (its methods take other "
                                 "inputs); export it again with `l2mu-agent export`")
        # Tells two programs of the same name apart (a retrained or personalised model keeps its name): the
        # program's SHA-256, which the metadata records and read_metadata has just checked against the file.
        self.model_id = (self.meta.program_sha256 or sha256_file(self.path))[:MODEL_ID_CHARS]
        self.part_sizes = [int(part["size"]) for part in self.meta.state]
        self.n_channels = len(self.meta.channels)
        self.batch_max = self.meta.step_batch_max
        self.chunk = self.meta.chunk_samples
        runtime = native_runner()
        try:
            with native_stderr_silenced():
                # `step` is what the agent runs; `chunk` (evaluation, the window path) is planned on first use:
                # its unrolled time steps are most of a loaded program's memory.
                self._runner = runtime.Runner(str(self.path), ["step"])
                expected = {"chunk": [[self.chunk, self.n_channels]] + [[1, n] for n in self.part_sizes],
                            "step": [[self.batch_max, n] for n in (self.n_channels, *self.part_sizes)]}
                for method, sizes in expected.items():
                    if self._runner.input_sizes(method) != sizes:
                        raise ValueError(f"its {method} method takes {self._runner.input_sizes(method)}, "
                                         f"the metadata says {sizes}")
                window = self._runner.output_sizes(WINDOW_METHOD)
                if window != [[self.meta.window_samples]]:
                    raise ValueError(f"it was made for windows of {window[0][0] if window else '?'} samples, "
                                     f"the metadata says {self.meta.window_samples}")
                self.step_batch(np.zeros((1, self.n_channels), np.float32), self.initial_state())
        except (RuntimeError, ValueError) as exc:  # RunnerError is a RuntimeError; every message is one line
            reason = " ".join(str(exc).split())
            raise ModelFileError(f"{self.path}: ExecuTorch cannot load it ({reason})") from exc

    @property
    def name(self) -> str:
        return self.meta.name

    def counts(self, window: np.ndarray) -> np.ndarray:
        """Spike counts per class [K] of one normalised window [T, C], from the zero state."""
        if not self._runner.is_loaded("chunk"):
            try:
                with native_stderr_silenced():
                    self._runner.load_method("chunk")
            except RuntimeError as exc:
                raise ModelFileError(f"{self.path}: ExecuTorch cannot load it ({' '.join(str(exc).split())})") from exc
        return counts_by_chunks(lambda inputs: self._runner.run("chunk", inputs),
                                np.ascontiguousarray(window, dtype=np.float32), self.chunk, self.initial_state())

    def initial_state(self, batch: int = 1) -> list[np.ndarray]:
        """Zero states of `batch` chains: where every window's chain starts."""
        return [np.zeros((batch, n), np.float32) for n in self.part_sizes]

    def step_batch(self, samples: np.ndarray, state: list[np.ndarray],
                   out: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """One normalised sample [B, C] for each of B chains: (counts so far [B, K], new state).

        All arrays C-contiguous float32. With `out` (one array per part, at least [B, n] each; it may be
        `state` itself, which is read first) the new state is written there and `out` returned."""
        if len(samples) > self.batch_max:
            raise ValueError(f"{len(samples)} chains in one step; this program takes at most {self.batch_max}")
        if out is None:
            new_state = self._runner.run("step", [samples, *state])
        else:
            self._runner.run_into("step", [samples, *state], out)
            new_state = out
        return new_state[0], new_state

    def step_rows(self, samples: np.ndarray, pools: list[np.ndarray], rows: list[int]) -> np.ndarray:
        """`step_batch` for chains whose states are rows of `pools` (one [rows, n] array per part): chain i
        is row rows[i] of every pool, advanced in place; returns its counts so far [B, K]. The runner
        gathers and scatters the rows itself — two numpy fancy-index copies per part cost more than the step."""
        if len(samples) > self.batch_max:
            raise ValueError(f"{len(samples)} chains in one step; this program takes at most {self.batch_max}")
        counts = np.empty((len(rows), self.part_sizes[0]), np.float32)
        self._runner.run_rows("step", samples, pools, rows, counts)
        return counts

    def step(self, sample: np.ndarray, state: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """(counts so far [K], new state) after one normalised sample [C] of one chain."""
        counts, new_state = self.step_batch(np.ascontiguousarray(sample, dtype=np.float32)[None], state)
        return counts[0], new_state

    def decide(self, window: np.ndarray) -> Decision:
        return decision_from_counts(self.counts(window))


def counts_by_chunks(run_chunk: Callable[[list], list], window: Any, chunk: int, state: list) -> Any:
    """A window's counts [K] through a program's `chunk` method: `run_chunk([samples, *state])` → new state
    (counts first), from `state` (one chain's zero state), `chunk` samples at a time (numpy or torch arrays)."""
    if len(window) % chunk:
        raise ValueError(f"a window of {len(window)} samples is not a whole number of {chunk}-sample chunks")
    for start in range(0, len(window), chunk):
        state = list(run_chunk([window[start : start + chunk], *state]))
    return state[0][0]


def decision_from_counts(counts: np.ndarray) -> Decision:
    # The network is trained with cross-entropy on counts, so their softmax is its belief.
    z = counts - counts.max()
    p = np.exp(z) / np.exp(z).sum()
    i = int(np.argmax(counts))
    return Decision(i, float(p[i]), p, counts)
