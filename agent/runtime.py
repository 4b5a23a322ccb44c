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

DEFAULT_MODEL = "hand7-acc-gyro"


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


@dataclass
class Decision:
    index: int
    confidence: float
    probabilities: np.ndarray
    counts: np.ndarray


class ExecuTorchClassifier:
    """The exported program's `forward`: one normalised window [T, C] → spike counts per class."""

    def __init__(self, program_path: Path) -> None:
        self.path = Path(program_path)
        self.meta: ModelMetadata = read_metadata(self.path)
        try:
            with native_stderr_silenced():
                from executorch.runtime import Runtime

                program = Runtime.get().load_program(self.path)
                self._forward = program.load_method("forward")
                self._forward.execute([torch.zeros(self.meta.window_samples, len(self.meta.channels))])
        except Exception as exc:  # the runtime raises RuntimeError/ValueError for bad flatbuffers
            raise ModelFileError(f"{self.path}: ExecuTorch cannot load it ({exc})") from exc

    @property
    def name(self) -> str:
        return self.meta.name

    def counts(self, window: np.ndarray) -> np.ndarray:
        out = self._forward.execute([torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))])
        return out[0].numpy()

    def decide(self, window: np.ndarray) -> Decision:
        counts = self.counts(window)
        # The network is trained with cross-entropy on counts, so their softmax is its belief.
        z = counts - counts.max()
        p = np.exp(z) / np.exp(z).sum()
        i = int(np.argmax(counts))
        return Decision(i, float(p[i]), p, counts)
