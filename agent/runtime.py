"""Load an exported model (.pte + metadata) and run it with the ExecuTorch runtime."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from l2mu.model.metadata import ModelFileError, ModelMetadata, read_metadata

DEFAULT_MODEL = "hand8-acc-gyro"


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
    """Importing the runtime makes torchao warn about GPU kernels it cannot load, and loading a
    method makes XNNPACK's CPU probe print to fd 2: noise in a service log. Failures still
    surface as exceptions, which callers turn into one-line errors."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def single_threaded_kernels() -> None:
    """Run ExecuTorch's kernels on the calling thread instead of its pool (one worker per core).

    One window is a few hundred thousand multiply-adds: splitting it across threads costs more in
    hand-overs than it saves, and on a busy machine every hand-over waits for a core. Measured with
    the bundled model on 2 cores shared with training jobs: 5.4 ms → 0.95 ms per decision (median).
    The pool cannot be resized under loaded programs (it corrupts memory), so this must run before
    the first program is loaded in the process: the agent's entry points call it first thing.
    """
    with native_stderr_silenced():  # the runtime announces the resize on stderr
        runtime = executorch_bindings()
        if runtime._threadpool_get_thread_count() != 1:
            runtime._unsafe_reset_threadpool(1)


def executorch_bindings():  # noqa: ANN201 - a native extension module
    """The ExecuTorch C++ runtime's Python bindings, without the compiler.

    `executorch.runtime` and `portable_lib` import `executorch.exir` (the whole export toolchain and
    torchao) on the way: 140 MB more resident memory and seconds of start-up for an agent that only
    runs programs. The bindings themselves need only libtorch, which this module's `import torch` loaded."""
    from executorch.extension.pybindings import _C

    return _C


@dataclass
class Decision:
    index: int
    confidence: float
    probabilities: np.ndarray
    counts: np.ndarray


class ExecuTorchClassifier:
    """An exported program: `forward` (one normalised window [T, C] → spike counts per class) and
    `step` (one normalised sample [C] + flat state [S] → counts so far [K] + new state [S])."""

    def __init__(self, program_path: Path) -> None:
        self.path = Path(program_path)
        self.meta: ModelMetadata = read_metadata(self.path)
        if not self.meta.state or self.meta.state[0].get("name") != "counts" or "offset" not in self.meta.state[0]:
            raise ModelFileError(f"{self.path}: exported by an older l2mu-agent (its step method takes another "
                                 "state); export it again with `l2mu-agent export`")
        self._zero_state = torch.zeros(sum(part["size"] for part in self.meta.state))
        try:
            with native_stderr_silenced():
                runtime = executorch_bindings()
                self._program = runtime._load_program(
                    str(self.path), program_verification=runtime.Verification.InternalConsistency)
                self._forward = self._program.load_method("forward")
                self._step = self._program.load_method("step")
                self._forward([torch.zeros(self.meta.window_samples, len(self.meta.channels))])
                self._step([torch.zeros(len(self.meta.channels)), self._zero_state])
        except Exception as exc:  # the runtime raises RuntimeError/ValueError for bad flatbuffers
            reason = " ".join(str(exc).split())  # one line, whatever the runtime's message looks like
            raise ModelFileError(f"{self.path}: ExecuTorch cannot load it ({reason})") from exc

    @property
    def name(self) -> str:
        return self.meta.name

    def counts(self, window: np.ndarray) -> np.ndarray:
        out = self._forward([torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))])
        return out[0].numpy()

    def initial_state(self) -> torch.Tensor:
        """The zero state a window starts from (`step` returns a new state, it never writes this one)."""
        return self._zero_state

    def step(self, sample: np.ndarray, state: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(counts so far, new state) after one normalised sample [C]."""
        counts, new_state = self._step([torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32)), state])
        return counts.numpy(), new_state

    def decide(self, window: np.ndarray) -> Decision:
        return decision_from_counts(self.counts(window))


def decision_from_counts(counts: np.ndarray) -> Decision:
    # The network is trained with cross-entropy on counts, so their softmax is its belief.
    z = counts - counts.max()
    p = np.exp(z) / np.exp(z).sum()
    i = int(np.argmax(counts))
    return Decision(i, float(p[i]), p, counts)
