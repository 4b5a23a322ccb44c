"""Magnitude pruning of the L2MU's synapses, then a short masked fine-tune (as in the paper).

The nine `nn.Linear` layers are the synapses; the smallest-magnitude weights are set to zero,
either the same fraction in every layer ("layer", the default: no small layer can be wiped out)
or one threshold across all of them ("global"). The masks stay applied throughout the fine-tune:
gradients of pruned weights are zeroed and the weights re-zeroed after every optimiser step, so
AdamW's momentum and weight decay cannot revive them.

The fine-tune trains on the training subjects with the training recipe's augmentation and keeps
the epoch (0 = pruned, not yet fine-tuned) with the best macro-F1 on the validation subjects.
Test subjects are never read here (l2mu.export.data removes them whatever the checkpoint says).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from l2mu.export.data import fit_subjects, normalise_windows, raw_windows
from l2mu.model.augment import augment
from l2mu.model.checkpoint import Checkpoint, save_checkpoint
from l2mu.model.l2mu import L2MU
from l2mu.model.metrics import classification_report
from l2mu.model.train import predict_counts

SCOPES = ("layer", "global")


def synapse_layers(model: L2MU) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _smallest(weights: Tensor, k: int) -> Tensor:
    """Mask (True = kept) with exactly the k smallest |w| removed, ties broken by position."""
    mask = torch.ones(weights.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.argsort(weights.abs().flatten(), stable=True)[:k]] = False
    return mask.reshape(weights.shape)


def magnitude_masks(model: L2MU, sparsity: float, scope: str = "layer") -> dict[str, Tensor]:
    """Masks that zero round(sparsity × n) weights per layer ("layer") or over all layers ("global")."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"pruning scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    layers = synapse_layers(model)
    if scope == "layer":
        return {n: _smallest(m.weight.detach(), round(sparsity * m.weight.numel())) for n, m in layers.items()}
    flat = torch.cat([m.weight.detach().flatten() for m in layers.values()])
    keep = _smallest(flat, round(sparsity * flat.numel()))
    masks, i = {}, 0
    for n, m in layers.items():
        masks[n] = keep[i : i + m.weight.numel()].reshape(m.weight.shape)
        i += m.weight.numel()
    return masks


def apply_masks(model: L2MU, masks: dict[str, Tensor]) -> None:
    layers = synapse_layers(model)
    with torch.no_grad():
        for name, mask in masks.items():
            layers[name].weight.mul_(mask)


def sparsity_of(model: L2MU) -> dict:
    """Fraction of zero weights per synapse layer and overall."""
    layers = synapse_layers(model)
    zeros = {n: int((m.weight == 0).sum()) for n, m in layers.items()}
    total = sum(m.weight.numel() for m in layers.values())
    return {"layers": {n: zeros[n] / layers[n].weight.numel() for n in layers},
            "overall": sum(zeros.values()) / total, "weights": total}


def masked_epoch(model: L2MU, masks: dict[str, Tensor], opt: torch.optim.Optimizer,
                 batches: Iterable[tuple[np.ndarray, np.ndarray]], mean: Tensor, std: Tensor, gen: torch.Generator,
                 rotate_deg: float) -> float:
    """One pass over raw-window batches with the training recipe's augmentation; pruned weights stay zero
    (their gradients are masked, and the weights re-zeroed after each step). Returns the mean loss."""
    layers = synapse_layers(model)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    losses = []
    for x, y in batches:
        xb = torch.from_numpy(x).float()
        if rotate_deg > 0:
            xb = augment(xb, gen, rotate_deg)
        loss = loss_fn(model((xb - mean) / std), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        for name, mask in masks.items():
            layers[name].weight.grad.mul_(mask)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        apply_masks(model, masks)
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")


@dataclass
class FinetuneConfig:
    sparsity: float
    epochs: int = 3
    scope: str = "layer"
    lr: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 128
    train_hop: int = 20  # 1 s between training windows, as in training
    rotate_deg: float = 30.0
    seed: int = 0
    max_steps_per_epoch: int | None = None
    subjects: list[int] | None = None  # pool of fitting subjects (default: the checkpoint's own)
    val_subjects: list[int] | None = None


def prune_and_finetune(ckpt: Checkpoint, data: Path, cfg: FinetuneConfig,
                       log: Callable[[str], None] | None = None) -> tuple[Checkpoint, dict]:
    """A pruned, fine-tuned copy of `ckpt` and the report of what was done."""
    if not isinstance(ckpt.model, L2MU):
        raise ValueError(f"{ckpt.metadata.name}: only L2MU checkpoints are pruned here")
    magnitude_masks(ckpt.model, cfg.sparsity, cfg.scope)  # a bad sparsity or scope fails before data loads
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    meta = copy.deepcopy(ckpt.metadata)
    model: L2MU = copy.deepcopy(ckpt.model)
    model.graph_mode = False  # training needs the snnTorch neurons' surrogate gradients
    train_subj, val_subj = fit_subjects(data, meta, cfg.subjects, cfg.val_subjects)
    x_tr, y_tr = raw_windows(data, meta, train_subj, cfg.train_hop)
    x_va, y_va = raw_windows(data, meta, val_subj, meta.window_samples) if val_subj else (None, None)
    x_va = normalise_windows(x_va, meta) if x_va is not None else None
    mean = torch.tensor(meta.norm_mean, dtype=torch.float32)
    std = torch.tensor(meta.norm_std, dtype=torch.float32)

    masks = magnitude_masks(model, cfg.sparsity, cfg.scope)
    apply_masks(model, masks)

    def validate() -> float | None:
        if x_va is None:
            return None
        return classification_report(y_va, predict_counts(model, x_va).argmax(1), meta.classes)["macro_f1"]

    history = [{"epoch": 0, "train_loss": None, "val_macro_f1": validate()}]
    best = (history[0]["val_macro_f1"] or -1.0, 0, copy.deepcopy(model.state_dict()))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = (len(x_tr) + cfg.batch_size - 1) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(len(x_tr), generator=gen).numpy()
        batches = [order[i * cfg.batch_size : (i + 1) * cfg.batch_size] for i in range(steps)]
        loss = masked_epoch(model, masks, opt, ((x_tr[idx], y_tr[idx]) for idx in batches), mean, std, gen,
                            cfg.rotate_deg)
        score = validate()
        history.append({"epoch": epoch, "train_loss": loss, "val_macro_f1": score})
        if log:
            log(f"epoch {epoch}: loss {loss:.3f}, validation macro-F1 "
                f"{'-' if score is None else f'{score:.3f}'} ({time.time() - t0:.0f} s)")
        if score is None or score > best[0]:
            best = (score if score is not None else -1.0, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    report = {
        "sparsity": cfg.sparsity, "scope": cfg.scope, "achieved": sparsity_of(model),
        "finetune_epochs": cfg.epochs, "best_epoch": best[1], "lr": cfg.lr, "seed": cfg.seed,
        "train_subjects": train_subj, "validation_subjects": val_subj, "history": history,
        "seconds": round(time.time() - t0, 1), "source": ckpt.metadata.name,
    }
    meta.name = f"{ckpt.metadata.name}-p{round(cfg.sparsity * 100)}"
    meta.training = {**meta.training, "pruning": {k: v for k, v in report.items() if k != "history"}}
    return Checkpoint(model, meta), report


def compress_checkpoint(checkpoint: Path, data: Path, out: Path, cfg: FinetuneConfig) -> dict:
    """`l2mu-agent compress`: prune + fine-tune `checkpoint`, save the result at `out`."""
    from l2mu.model.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    pruned, report = prune_and_finetune(ckpt, data, cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    save_checkpoint(out, pruned.model, pruned.metadata)
    return report
