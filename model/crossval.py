"""K-fold cross-validation by subject over every non-test subject: the protocol every recipe
choice is made with. Six validation subjects cannot rank recipes (a 1.7-point lead there became
a 0.2-point loss on new wearers); thirty, each scored by a model that never saw them, can.

Each fold trains on the other folds' subjects for a fixed number of epochs and keeps the last
epoch (no early stopping on the subjects it is scored on). Folds run one at a time or, with
`only_fold`, one per process; a fold whose report exists with the same recipe is not rerun,
so an interrupted run resumes and parallel fold runs share one directory. The six test
subjects are in no fold."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from l2mu.model import wisdm
from l2mu.model.smoothing_cv import smoothing_scores, summarise_smoothing
from l2mu.model.splits import TEST_SUBJECTS
from l2mu.model.train import SENSOR_SETS, TrainConfig, train


def subject_folds(subjects: list[int], k: int, seed: int = 0) -> list[list[int]]:
    """k disjoint folds covering `subjects` (shuffled with `seed`, sizes differing by at most one)."""
    if k < 2 or k > len(subjects):
        raise ValueError(f"--folds must be between 2 and the number of subjects ({len(subjects)}), not {k}")
    order = np.random.default_rng(seed).permutation(sorted(subjects))
    return [sorted(int(s) for s in part) for part in np.array_split(order, k)]


def recipe_of(cfg: TrainConfig) -> dict:
    """What identifies a recipe (everything but where it writes and which subjects it sees)."""
    skip = {"data", "out", "subjects", "val_subjects", "name"}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items() if k not in skip}


def pool_subjects(cfg: TrainConfig) -> list[int]:
    available = wisdm.list_subjects(cfg.data, SENSOR_SETS[cfg.sensors])
    pool = cfg.subjects or available
    return [s for s in pool if s in available and s not in TEST_SUBJECTS]


def run_fold(cfg: TrainConfig, folds: list[list[int]], index: int, progress: bool = False) -> dict:
    fold_dir = cfg.out / f"fold{index}"
    done = fold_dir / "report.json"
    recipe = recipe_of(cfg)
    if done.is_file():
        report = json.loads(done.read_text())
        if report.get("recipe") == recipe and report["subjects"]["validation_subjects"] == folds[index]:
            return report
    val = folds[index]
    train_subj = [s for fold in folds for s in fold if s not in val]
    fold_cfg = replace(cfg, out=fold_dir, subjects=train_subj + val, val_subjects=val, keep="last",
                       patience=cfg.epochs)
    report = train(fold_cfg, progress=progress)
    report["recipe"] = recipe
    done.write_text(json.dumps(report, indent=2) + "\n")
    return report


def mean_sd(values: list[float]) -> dict:
    arr = np.asarray(values, float)
    return {"mean": float(arr.mean()), "sd": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


def summarise(cfg: TrainConfig, folds: list[list[int]], reports: list[dict]) -> dict:
    by_subject: dict[str, dict] = {}
    for rep in reports:
        by_subject.update(rep["validation"]["by_subject"])
    epochs = min(len(r["history"]) for r in reports)
    curve = [float(np.mean([r["history"][e]["val_macro_f1"] for r in reports])) for e in range(epochs)]
    rates = {}
    for pop in reports[0]["validation"].get("firing_rate", {}):
        rates[pop] = float(np.mean([r["validation"]["firing_rate"][pop] for r in reports]))
    at_rate = {}
    for hz in reports[0]["validation"].get("at_rate_hz", {}):
        at_rate[hz] = {m: mean_sd([r["validation"]["at_rate_hz"][hz][m] for r in reports])
                       for m in ("accuracy", "macro_f1")}
    subj_acc = [v["accuracy"] for v in by_subject.values()]
    cost = {}
    for key in ("synops_per_window", "macs_per_window"):  # fold reports from before the cost was counted lack it
        if all(key in r["validation"].get("cost", {}) for r in reports):
            cost[key] = mean_sd([r["validation"]["cost"][key] for r in reports])
    smoothing: dict[str, dict] = {}
    for i, fold in enumerate(folds):
        smoothing.update(smoothing_scores(cfg.out / f"fold{i}" / "checkpoint.pt", cfg.data, fold))
    return {
        "recipe": recipe_of(cfg),
        "folds": folds,
        "params": reports[0]["params"],
        "accuracy": mean_sd([r["validation"]["accuracy"] for r in reports]),
        "macro_f1": mean_sd([r["validation"]["macro_f1"] for r in reports]),
        "subject_accuracy": {**mean_sd(subj_acc), "min": float(min(subj_acc)), "max": float(max(subj_acc))},
        "by_subject": dict(sorted(by_subject.items())),
        "firing_rate": rates,
        "cost": cost,
        "at_rate_hz": at_rate,
        # Decision smoothing on the validation subjects' activities played back to back.
        "smoothing": summarise_smoothing(smoothing),
        "mean_val_macro_f1_by_epoch": curve,
        "best_mean_epoch": int(np.argmax(curve)) + 1,
        "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in reports])),
        "seconds": float(sum(r["seconds"] for r in reports)),
    }


def crossval(cfg: TrainConfig, k: int = 5, only_fold: int | None = None, seed: int = 0,
             progress: bool = False) -> dict | None:
    """Runs the folds (or just `only_fold`) into cfg.out; returns the summary once every fold is
    done (also written to cfg.out/crossval.json), else None."""
    folds = subject_folds(pool_subjects(cfg), k, seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    indices = range(k) if only_fold is None else [only_fold]
    if only_fold is not None and not 0 <= only_fold < k:
        raise ValueError(f"--fold must be between 0 and {k - 1}, not {only_fold}")
    for i in indices:
        run_fold(cfg, folds, i, progress)
    reports = []
    for i in range(k):
        path = cfg.out / f"fold{i}" / "report.json"
        rep = json.loads(path.read_text()) if path.is_file() else None
        if rep is None or rep.get("recipe") != recipe_of(cfg):
            return None
        reports.append(rep)
    summary = summarise(cfg, folds, reports)
    (cfg.out / "crossval.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
