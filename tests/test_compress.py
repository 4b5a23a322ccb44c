"""Compression and the comparison runtime: magnitude pruning with a masked fine-tune, ONNX."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from l2mu.export.compress import apply_masks, magnitude_masks, masked_epoch, sparsity_of, synapse_layers
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.metadata import ModelFileError

from .conftest import cli_command
from .test_export import real_windows


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("sparsity", [0.5, 0.7, 0.9])
def test_magnitude_pruning_zeroes_the_stated_fraction_of_the_smallest_weights(
        tiny_checkpoint: Path, sparsity: float, scope: str) -> None:
    model = load_checkpoint(tiny_checkpoint).model
    before = {n: m.weight.detach().clone() for n, m in synapse_layers(model).items()}
    apply_masks(model, magnitude_masks(model, sparsity, scope))
    report = sparsity_of(model)
    assert report["overall"] == pytest.approx(sparsity, abs=len(report["layers"]) / report["weights"])
    kept = torch.cat([m.weight.detach().flatten() for m in synapse_layers(model).values()])
    removed = torch.cat([before[n].flatten()[m.weight.detach().flatten() == 0] for n, m in
                         synapse_layers(model).items()])
    if scope == "layer":
        for name, fraction in report["layers"].items():
            assert fraction == pytest.approx(sparsity, abs=1.0 / before[name].numel()), name
    else:  # one threshold: nothing removed is larger than anything kept
        assert removed.abs().max() <= kept[kept != 0].abs().min()


def test_masked_fine_tune_trains_the_kept_weights_and_never_revives_pruned_ones(
        tiny_checkpoint: Path, wisdm_root: Path) -> None:
    from l2mu.export.data import raw_windows

    ckpt = load_checkpoint(tiny_checkpoint)
    model, meta = ckpt.model, ckpt.metadata
    masks = magnitude_masks(model, 0.7)
    apply_masks(model, masks)
    pruned = {n: m.weight.detach().clone() for n, m in synapse_layers(model).items()}
    x, y = raw_windows(wisdm_root, meta, [1600], hop=meta.window_samples)
    batches = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 32 * 6, 32)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-2)  # strong enough to move anything
    loss = masked_epoch(model, masks, opt, batches, torch.tensor(meta.norm_mean), torch.tensor(meta.norm_std),
                        torch.Generator().manual_seed(0), rotate_deg=30.0)
    assert np.isfinite(loss)
    for name, layer in synapse_layers(model).items():
        w = layer.weight.detach()
        assert torch.equal(w == 0, pruned[name] == 0), f"{name}: zeros moved"
        assert not torch.equal(w, pruned[name]), f"{name}: the kept weights did not train"


def test_compress_command_writes_a_pruned_checkpoint_with_its_report(tiny_checkpoint: Path, wisdm_root: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "pruned.pt"
    proc = subprocess.run([*cli_command(), "compress", "--checkpoint", str(tiny_checkpoint), "--data", str(wisdm_root),
                           "--out", str(out), "--sparsity", "0.7", "--finetune-epochs", "1",
                           "--max-steps-per-epoch", "2", "--subjects", "1600,1601,1603", "--val-subjects", "1603"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pruned = load_checkpoint(out)
    assert sparsity_of(pruned.model)["overall"] == pytest.approx(0.7, abs=0.01)
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["train_subjects"] == [1600, 1601] and report["validation_subjects"] == [1603]
    assert [h["epoch"] for h in report["history"]] == [0, 1] and report["history"][1]["train_loss"] > 0
    assert pruned.metadata.name.endswith("-p70") and pruned.metadata.training["pruning"]["sparsity"] == 0.7
    assert "wrote" in proc.stdout and "70.0%" in proc.stdout


def test_compress_never_uses_test_subjects(tiny_checkpoint: Path, wisdm_root: Path) -> None:
    from l2mu.export.data import fit_subjects
    from l2mu.model.splits import TEST_SUBJECTS

    meta = load_checkpoint(tiny_checkpoint).metadata
    meta.training = {"train_subjects": [1600, TEST_SUBJECTS[0]], "validation_subjects": [TEST_SUBJECTS[1], 1603]}
    assert fit_subjects(wisdm_root, meta) == ([1600], [1603])
    train, val = fit_subjects(wisdm_root, meta, pool=[1600, 1601, *TEST_SUBJECTS], validation=[1601])
    assert not set(train + val) & set(TEST_SUBJECTS)


# ---- ONNX (comparison only) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from l2mu.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(load_checkpoint(tiny_checkpoint), out)
    return out


def test_onnx_runtime_matches_the_eager_network_on_real_windows(tiny_onnx: Path, tiny_program: Path,
                                                                tiny_checkpoint: Path, wisdm_root: Path) -> None:
    from l2mu.export.onnx_export import OnnxRuntimeModel, onnx_paths
    from l2mu.model.metadata import read_metadata

    meta = read_metadata(tiny_program)  # the same state layout as the ExecuTorch program's
    ort = OnnxRuntimeModel(tiny_onnx, meta)
    assert all(p.is_file() for p in onnx_paths(tiny_onnx).values())
    x = real_windows(wisdm_root, meta)
    with torch.no_grad():
        eager = load_checkpoint(tiny_checkpoint).model(torch.from_numpy(x)).numpy()
    window = np.stack([ort.counts(w) for w in x])
    assert (window.argmax(1) == eager.argmax(1)).mean() >= 0.995
    np.testing.assert_allclose(window, eager, atol=1e-5)
    for w, expected in zip(x[:20], window[:20], strict=True):
        state = ort.initial_state()
        for sample in w:
            counts, state = ort.step(sample, state)
        np.testing.assert_array_equal(counts, expected)


def test_onnx_file_that_is_not_onnx_is_refused(tiny_onnx: Path, tiny_program: Path, tmp_path: Path) -> None:
    from l2mu.export.onnx_export import OnnxRuntimeModel, onnx_paths
    from l2mu.model.metadata import read_metadata

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    shutil.copy(onnx_paths(tiny_onnx)["step"], onnx_paths(bad)["step"])
    with pytest.raises(ModelFileError, match="ONNX Runtime cannot load it"):
        OnnxRuntimeModel(bad, read_metadata(tiny_program))
