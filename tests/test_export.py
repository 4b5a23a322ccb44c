"""ExecuTorch export: program + metadata, parity with the eager network, bad files refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from l2mu.agent.runtime import ExecuTorchClassifier
from l2mu.model import wisdm
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.metadata import ModelFileError, read_metadata

from .conftest import TINY_WINDOW


def real_windows(root: Path, meta, n: int = 200) -> np.ndarray:  # noqa: ANN001
    w = wisdm.load_windows(root, [1601], activities=wisdm.HAND7, hop=TINY_WINDOW)
    x = w.x[:: max(1, len(w.x) // n)][:n, :TINY_WINDOW]
    return ((x - np.asarray(meta.norm_mean)) / np.asarray(meta.norm_std)).astype(np.float32)


def test_metadata_beside_program_describes_the_model(tiny_program: Path) -> None:
    meta = json.loads(tiny_program.with_suffix(".json").read_text())
    assert meta["classes"] == list(wisdm.HAND7)
    assert meta["channels"] == ["acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z"]
    assert meta["units"] == {"acc": "m/s^2", "gyro": "rad/s"}
    assert meta["sample_rate_hz"] == 20.0 and meta["window_samples"] == TINY_WINDOW
    assert len(meta["norm_mean"]) == len(meta["norm_std"]) == 6
    assert meta["sensors"] == ["acc", "gyro"]
    assert [s["name"] for s in meta["state"]][-2:] == ["spk_h", "spk_m"]


def test_program_matches_eager_network_on_real_windows(tiny_program: Path, tiny_checkpoint: Path,
                                                        wisdm_root: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    clf = ExecuTorchClassifier(tiny_program)
    x = real_windows(wisdm_root, clf.meta)
    with torch.no_grad():
        eager = ckpt.model(torch.from_numpy(x)).numpy()
    pte = np.stack([clf.counts(w) for w in x])
    assert eager.sum() > 0
    np.testing.assert_allclose(pte, eager, atol=1e-5)
    assert (pte.argmax(1) == eager.argmax(1)).mean() >= 0.995


def test_step_method_applied_t_times_equals_forward(tiny_program: Path, wisdm_root: Path) -> None:
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(tiny_program)
    forward, step = program.load_method("forward"), program.load_method("step")
    meta = read_metadata(tiny_program)
    for window in real_windows(wisdm_root, meta, n=5):
        x = torch.from_numpy(window)
        state = [torch.zeros(s["shape"]) for s in meta.state]
        total = torch.zeros(len(meta.classes))
        for t in range(len(x)):
            out, *state = step.execute([x[t], *state])
            total += out
        torch.testing.assert_close(total, forward.execute([x])[0])


def test_truncated_program_is_refused_with_a_clear_error(tiny_program: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pte"
    bad.write_bytes(tiny_program.read_bytes()[:1000])
    shutil.copy(tiny_program.with_suffix(".json"), bad.with_suffix(".json"))
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        ExecuTorchClassifier(bad)


def test_missing_metadata_is_refused(tiny_program: Path, tmp_path: Path) -> None:
    lone = tmp_path / "lone.pte"
    shutil.copy(tiny_program, lone)
    with pytest.raises(ModelFileError, match="metadata file lone.json missing"):
        ExecuTorchClassifier(lone)


def test_garbage_checkpoint_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError, match="not a usable L2MU checkpoint"):
        load_checkpoint(bad)
