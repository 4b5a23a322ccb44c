"""Train an L2MU on WISDM-2019 watch data, split by subject, with early stopping on validation.

Writes into --out: checkpoint.pt, report.json, curves.png, confusion.png.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from l2mu.model import wisdm
from l2mu.model.augment import augment, random_slower_watch, slower_watch, time_warp
from l2mu.model.baselines import BASELINE_ARCHS, BaselineConfig, build_baseline
from l2mu.model.checkpoint import Checkpoint, save_checkpoint
from l2mu.model.l2mu import L2MU, L2MUConfig
from l2mu.model.metadata import ModelMetadata
from l2mu.model.metrics import classification_report
from l2mu.model.synops import compute_cost
from l2mu.model.trainingdata import (  # noqa: F401 (labels_for, labelled_windows: imported from here too)
    CLASS_SETS,
    OTHER,
    SENSOR_SETS,
    TrainingData,
    labelled_windows,
    labels_for,
    load_training_data,
)


@dataclass
class TrainConfig:
    data: Path | None  # WISDM-2019 root; None: recordings alone
    out: Path
    classes: str | None = "hand7"  # hand7, hand8, a comma-separated list; None: every recorded label
    sensors: str = "acc-gyro"
    neuron: str = "leaky"
    arch: str = "l2mu"  # or a non-spiking baseline: "lmu", "gru"
    epochs: int = 40
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 10
    train_hop: int = 20  # 1 s between training windows: overlapping, shifted examples
    eval_hop: int = wisdm.WINDOW_SAMPLES
    window: int = wisdm.WINDOW_SAMPLES  # grid samples per window (2 s); shorter ones export faster (tests)
    seed: int = 0
    subjects: list[int] | None = None
    val_subjects: list[int] | None = None
    recordings: list[Path] = field(default_factory=list)  # folders of labelled recordings, by wearer
    val_wearers: list[str] | None = None  # validation wearers by name (WISDM subjects by number)
    rotate_deg: float = 30.0  # augmentation: random watch orientation within ±this
    # The recipe below was chosen by `l2mu-agent crossval` (MODEL.md, "Cross-subject protocol"): on 30
    # wearers it ties the plain recipe in accuracy, keeps accuracy at 10 Hz watches and u/m firing.
    time_warp: float = 0.1  # augmentation: windows played 1 ± this faster or slower
    slow_watch_share: float = 0.3  # augmentation: share of batches seen through a 10–20 Hz watch
    slow_watch_low_hz: float = 10.0
    # Firing-rate floor: a squared penalty on each of `u` and `m` whose mean rate falls below it,
    # so the Legendre memory cannot fall silent (as it did in the first hand8 model).
    rate_floor: float = 0.05
    rate_weight: float = 10.0
    label_smoothing: float = 0.0
    keep: str = "best"  # "best" validation epoch, or "last" (cross-validation, final fits: no peeking)
    # Watch rates at which the validation windows are also scored (through `slower_watch`).
    eval_rates_hz: tuple[float, ...] = ()
    max_steps_per_epoch: int | None = None  # tests cap this to train for a few steps
    # Fine-tuning from a checkpoint (`train(start=…)`): which weights learn, "all" or "readout" (the h and
    # output populations and their synapses; the input module and the Legendre memory stay as they were).
    trainable: str = "all"
    plots: bool = True
    name: str = ""
    model: dict = field(default_factory=dict)  # L2MUConfig / BaselineConfig overrides


def default_name(cfg: TrainConfig) -> str:
    classes = cfg.classes if cfg.classes in CLASS_SETS else "recorded"
    name = f"{classes}-{cfg.sensors}"
    if cfg.arch != "l2mu":
        return f"{name}-{cfg.arch}"
    return f"{name}-synaptic" if cfg.neuron == "synaptic" else name


def build_model(cfg: TrainConfig, n_channels: int, n_classes: int) -> nn.Module:
    if cfg.arch == "l2mu":
        return L2MU(L2MUConfig(n_channels=n_channels, n_classes=n_classes, neuron=cfg.neuron, **cfg.model))
    if cfg.arch in BASELINE_ARCHS:
        return build_baseline(BaselineConfig(arch=cfg.arch, n_channels=n_channels, n_classes=n_classes, **cfg.model))
    raise ValueError(f"unknown architecture {cfg.arch!r} (expected l2mu, {', '.join(BASELINE_ARCHS)})")


def predict_counts(model: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(model(torch.from_numpy(x[i : i + batch])).numpy())
    return np.concatenate(outs) if outs else np.zeros((0, model.cfg.n_classes), np.float32)


@torch.no_grad()
def firing_rates(model: nn.Module, x: np.ndarray, batch: int = 512) -> dict[str, float]:
    """Mean firing rate (spikes per neuron per step) of the recurrent and output populations."""
    if not isinstance(model, L2MU) or len(x) == 0:
        return {}
    model.eval()
    sums: dict[str, float] = {}
    for i in range(0, len(x), batch):
        _, rates = model.forward_layerwise(torch.from_numpy(x[i : i + batch]))
        for k, v in rates.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / len(x) for k, v in sums.items()}


def scores_by_subject(y: np.ndarray, pred: np.ndarray, subjects: np.ndarray, classes: tuple[str, ...]) -> dict:
    out = {}
    for s in np.unique(subjects):
        sel = subjects == s
        rep = classification_report(y[sel], pred[sel], classes)
        out[str(s)] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"], "n_windows": int(sel.sum())}
    return out


def rate_penalty(rates: dict[str, torch.Tensor], floor: float) -> torch.Tensor:
    return sum(torch.relu(floor - rates[p].mean()) ** 2 for p in ("u", "m"))


READOUT = ("w_x.", "w_h.", "w_m.", "fc_out.", "lif.h.", "lif.out.")  # the parameters trainable="readout" trains


def trainable_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    if which == "all":
        return list(model.parameters())
    if which == "readout" and isinstance(model, L2MU):
        chosen = [p for n, p in model.named_parameters() if n.startswith(READOUT)]
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(READOUT))
        return chosen
    raise ValueError(f"trainable must be 'all' or 'readout' (an L2MU's), not {which!r}")


def training_data(cfg: TrainConfig, rng: np.random.Generator) -> TrainingData:
    return load_training_data(
        cfg.data, cfg.recordings, SENSOR_SETS[cfg.sensors], cfg.classes, cfg.train_hop, cfg.eval_hop, rng,
        subjects=cfg.subjects, val_subjects=cfg.val_subjects, val_wearers=cfg.val_wearers, window=cfg.window,
    )


def validation_report(model: nn.Module, data: TrainingData, x_va: np.ndarray) -> dict:
    if not len(x_va):
        return {}
    return classification_report(data.y_va, predict_counts(model, x_va).argmax(1), data.classes.codes)


def train(cfg: TrainConfig, progress: bool = True, data: TrainingData | None = None,
          start: Checkpoint | None = None) -> dict:
    """The one training loop. From scratch (`start` None: a new model, normalised by the training windows'
    statistics) or fine-tuning `start` (its weights, its normalisation, its classes; epoch -1, the starting
    model itself, competes for the best validation score). `data`: windows already assembled (personalisation
    builds its own split), else loaded from cfg."""
    t0 = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True)

    if cfg.keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', not {cfg.keep!r}")
    sensors = SENSOR_SETS[cfg.sensors] if start is None else tuple(start.metadata.sensors)
    data = data or training_data(cfg, rng)
    classes = data.classes.codes
    x_tr, y_tr = data.x_tr, data.y_tr
    if start is None:
        mean = x_tr.reshape(-1, x_tr.shape[-1]).mean(0)
        std = x_tr.reshape(-1, x_tr.shape[-1]).std(0) + 1e-6
    else:
        if list(classes) != start.metadata.classes:
            raise ValueError("fine-tuning data must have the starting model's classes")
        mean, std = np.asarray(start.metadata.norm_mean), np.asarray(start.metadata.norm_std)
    mean_t, std_t = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
    x_va = ((data.x_va - mean) / std).astype(np.float32)

    if start is None:
        model = build_model(cfg, n_channels=len(sensors) * 3, n_classes=len(classes))
    else:
        model = copy.deepcopy(start.model)
    mcfg = model.cfg
    opt = torch.optim.AdamW(trainable_parameters(model, cfg.trainable), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    spiking = isinstance(model, L2MU)

    split = {**data.split, "seed": cfg.seed, "train_windows": len(x_tr), "validation_windows": len(x_va)}
    if start is None:
        meta = ModelMetadata(
            name=cfg.name or default_name(cfg),
            classes=list(classes),
            class_names=list(data.classes.names),
            sensors=list(sensors),
            sample_rate_hz=wisdm.SAMPLE_RATE_HZ,
            window_samples=x_tr.shape[1],
            norm_mean=[float(v) for v in mean],
            norm_std=[float(v) for v in std],
            training=split,
        )
    else:
        meta = copy.deepcopy(start.metadata)
        meta.name = cfg.name or f"{meta.name}-personal"
        meta.training = {**split, "fine_tuned_from": start.metadata.name, "base_training": start.metadata.training}
        meta.program_sha256, meta.state = "", []
    cfg.out.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    best = {"score": -1.0, "epoch": -1}
    best_state = None
    if start is not None:  # the starting model is the score to beat: fine-tuning never ends worse on validation
        val = validation_report(model, data, x_va)
        best = {"score": val.get("macro_f1", -1.0), "epoch": -1}
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        history.append({"epoch": -1, "train_loss": None, "val_accuracy": val.get("accuracy"),
                        "val_macro_f1": val.get("macro_f1"), "seconds": round(time.time() - t0, 1)})
        save_checkpoint(cfg.out / "checkpoint.pt", model, meta)
    steps_per_epoch = (len(x_tr) + cfg.batch_size - 1) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("training", total=cfg.epochs * steps_per_epoch, status="")
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(len(x_tr), generator=gen)
            losses = []
            for step in range(steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                xb = torch.from_numpy(x_tr[idx.numpy()]).float()
                if cfg.rotate_deg > 0:
                    xb = augment(xb, gen, cfg.rotate_deg)
                if cfg.time_warp > 0:
                    xb = time_warp(xb, gen, cfg.time_warp)
                if cfg.slow_watch_share > 0 and float(torch.rand(1, generator=gen)) < cfg.slow_watch_share:
                    xb = random_slower_watch(xb, gen, cfg.slow_watch_low_hz)
                xb = (xb - mean_t) / std_t
                yb = torch.from_numpy(y_tr[idx.numpy()])
                if spiking:
                    counts, rates = model.forward_layerwise(xb)
                    loss = loss_fn(counts, yb)
                    if cfg.rate_weight > 0:
                        loss = loss + cfg.rate_weight * rate_penalty(rates, cfg.rate_floor)
                else:
                    loss = loss_fn(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                losses.append(loss.item())
                bar.advance(task)
            sched.step()
            val = validation_report(model, data, x_va)
            score = val.get("macro_f1", -float(np.mean(losses)))
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                            "val_accuracy": val.get("accuracy"), "val_macro_f1": val.get("macro_f1"),
                            "seconds": round(time.time() - t0, 1)})
            if cfg.keep == "last" or score > best["score"]:
                best = {"score": score, "epoch": epoch}
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
                save_checkpoint(cfg.out / "checkpoint.pt", model, meta)
            status = f"epoch {epoch} loss {np.mean(losses):.3f} val F1 {score:.3f} best {best['score']:.3f}"
            bar.update(task, status=status)
            if not progress:
                print(status, f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
            if cfg.keep == "best" and epoch - best["epoch"] >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    pred_va = predict_counts(model, x_va).argmax(1)
    y_va = data.y_va
    val = classification_report(y_va, pred_va, classes) if len(x_va) else {}
    if len(x_va):
        val["by_subject"] = scores_by_subject(y_va, pred_va, data.wearer_va, classes)
        val["firing_rate"] = firing_rates(model, x_va)
        # What the recipe costs on the device, beside what it scores: SynOps for an L2MU, MACs for a baseline
        # (its parameters are the report's own `params`).
        cost = compute_cost(model, x_va)
        val["cost"] = {k: cost[k] for k in ("synops_per_window", "macs_per_window") if k in cost}
        val["at_rate_hz"] = {}
        for rate in cfg.eval_rates_hz:
            raw = torch.from_numpy(((x_va * std) + mean).astype(np.float32))
            slow = ((slower_watch(raw, rate).numpy() - mean) / std).astype(np.float32)
            rep = classification_report(y_va, predict_counts(model, slow).argmax(1), classes)
            val["at_rate_hz"][f"{rate:g}"] = {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}
    report = {
        "model": meta.name, "config": mcfg.to_dict(), "train": {k: str(v) if isinstance(v, Path) else v
                                                             for k, v in cfg.__dict__.items()},
        "subjects": meta.training, "best_epoch": best["epoch"], "history": history,
        "seconds_per_epoch": round((time.time() - t0) / max(1, len(history)), 1),
        "validation": val, "seconds": round(time.time() - t0, 1),
        "params": sum(p.numel() for p in model.parameters()),
    }
    (cfg.out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not cfg.plots:
        return report
    from l2mu.model.plots import plot_confusion, plot_curves

    plot_curves(history, cfg.out / "curves.png")
    if val:
        who = [*map(str, data.split.get("validation_subjects", [])), *data.split.get("validation_wearers", [])]
        plot_confusion(np.array(val["confusion"]), meta.class_names, cfg.out / "confusion.png",
                       title=f"{meta.name}: validation wearers {', '.join(who)}")
    return report
