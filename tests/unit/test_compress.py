"""Magnitude pruning and masked fine-tuning (l2mu.export.compress)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from l2mu.export.compress import apply_masks, magnitude_masks, masked_epoch, sparsity_of, synapse_layers
from l2mu.model.checkpoint import load_checkpoint


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


def test_compress_never_uses_test_subjects(tiny_checkpoint: Path, wisdm_root: Path) -> None:
    from l2mu.export.data import fit_subjects
    from l2mu.model.splits import TEST_SUBJECTS

    meta = load_checkpoint(tiny_checkpoint).metadata
    meta.training = {"train_subjects": [1600, TEST_SUBJECTS[0]], "validation_subjects": [TEST_SUBJECTS[1], 1603]}
    assert fit_subjects(wisdm_root, meta) == ([1600], [1603])
    train, val = fit_subjects(wisdm_root, meta, pool=[1600, 1601, *TEST_SUBJECTS], validation=[1601])
    assert not set(train + val) & set(TEST_SUBJECTS)
