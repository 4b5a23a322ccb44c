"""Personalisation measured on the WISDM test wearers: generic vs personalised accuracy, and its CPU cost.

For each test subject (l2mu.model.splits.TEST_SUBJECTS) and each N in --seconds, the first N s of every
activity (from the latest first sample of its sensors) are that wearer's recordings, labelled with the
model's class names (`other` for activities outside its classes); the rest of the subject's data is the
test. Both parts go through the agent's online resampler separately (l2mu.model.recordings), so no window
straddles the cut. Test windows do not overlap; `other` test windows are subsampled to a hand class's
mean count (seed 0), as `evaluate` does. The recipe is chosen on the personalisation data alone: the mean
macro-F1 on the held-out part of each wearer's own N s (never their test part). CPU seconds are
time.process_time() around `personalise` (data already resampled), on one thread.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/personalise_measure.py DATA --model hand7-acc-gyro \
        --seconds 60 --variants all:5e-4,readout:5e-4 --out model/reports/personalise/x.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from l2mu.agent.events import Sample
from l2mu.agent.runtime import bundled_dir
from l2mu.model.checkpoint import load_checkpoint
from l2mu.model.metrics import classification_report
from l2mu.model.personalise import PersonaliseConfig, classes_of, personalise
from l2mu.model.recordings import Segment, cut_windows, resample
from l2mu.model.splits import TEST_SUBJECTS
from l2mu.model.timegrid import sorted_unique
from l2mu.model.train import predict_counts
from l2mu.model.wisdm import read_raw, sensor_file

Part = list[tuple[str, list[Sample]]]  # (label, one activity's raw samples in time order)


def wearer_parts(root: Path, subject: int, sensors: list[str], names: dict[str, str], seconds: float
                 ) -> tuple[Part, Part]:
    """(first `seconds` of every activity, the rest), raw samples on the subject's clock, labelled."""
    streams = {s: read_raw(sensor_file(root, subject, s)) for s in sensors}
    first: Part = []
    rest: Part = []
    codes = sorted(set.intersection(*(set(np.unique(a)) for a, _, _ in streams.values())))
    for code in codes:
        label = names.get(code, names.get("other", ""))
        if not label:
            continue
        pieces = {}
        for sensor, (acts, ts, xyz) in streams.items():
            sel = acts == code
            pieces[sensor] = sorted_unique(ts[sel] * 1e-9, xyz[sel])
        cut = max(t[0] for t, _ in pieces.values()) + seconds
        for part, after in ((first, False), (rest, True)):
            chunk = [Sample(float(t), sensor, tuple(float(v) for v in row), label)
                     for sensor, (ts, vals) in pieces.items() for t, row in zip(ts, vals, strict=True)
                     if (t >= cut) == after]
            chunk.sort(key=lambda s: s.t)
            part.append((label, chunk))
    return first, rest


def segments(part: Part, wearer: str, sensors: list[str], rate: float) -> list[Segment]:
    # Each activity is resampled on its own, as a recording of its own would be.
    return [Segment(wearer, label, Path(wearer), piece) for label, run in part
            for piece in resample(run, sensors, rate)]


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, names: list[str]) -> dict:
    rep = classification_report(y, predict_counts(model, x).argmax(1), names)
    return {"accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}


def tables(folder: Path, trainable: str, lr: float) -> None:
    """The MODEL.md tables from the filed JSON: the recipe comparison and generic vs personalised."""
    recipe = json.loads((folder / "recipe-hand7-acc-gyro.json").read_text())["runs"]
    print("| what learns | lr | wearers | best held-out macro-F1 (own data) | test accuracy (generic) | CPU s |")
    print("|---|---|---|---|---|---|")
    for t, r in sorted({(x["trainable"], x["lr"]) for x in recipe}):
        mine = [x for x in recipe if (x["trainable"], x["lr"]) == (t, r)]
        held = np.mean([x["held_out_after"] for x in mine])
        tuned = np.mean([x["personalised"]["accuracy"] for x in mine])
        generic = np.mean([x["generic"]["accuracy"] for x in mine])
        cpu = np.mean([x["cpu_s"] for x in mine])
        print(f"| {t} | {r:g} | {len(mine)} | {held:.3f} | {tuned:.3f} ({generic:.3f}) | {cpu:.1f} |")
    print()
    for path in sorted(folder.glob("hand*.json")):
        runs = [x for x in json.loads(path.read_text())["runs"] if (x["trainable"], x["lr"]) == (trainable, lr)]
        subjects = sorted({x["subject"] for x in runs})
        print(f"`{path.stem}` ({trainable}, lr {lr:g}): test accuracy generic → personalised")
        print("| own data per activity | " + " | ".join(map(str, subjects)) + " | mean | CPU s (mean) |")
        print("|---|" + "---|" * (len(subjects) + 2))
        for sec in sorted({x["seconds"] for x in runs}):
            row = {x["subject"]: x for x in runs if x["seconds"] == sec}
            cells = [f"{row[s]['generic']['accuracy']:.3f} → **{row[s]['personalised']['accuracy']:.3f}**"
                     if s in row else "–" for s in subjects]
            g = np.mean([x["generic"]["accuracy"] for x in row.values()])
            pz = np.mean([x["personalised"]["accuracy"] for x in row.values()])
            cpu = np.mean([x["cpu_s"] for x in row.values()])
            print(f"| {sec:g} s | " + " | ".join(cells) + f" | {g:.3f} → **{pz:.3f}** | {cpu:.1f} |")
        print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", type=Path, help="print the MODEL.md tables from this folder's JSON and stop")
    ap.add_argument("--recipe", default="readout:5e-4", help="with --table: the recipe of the main table")
    if "--table" in __import__("sys").argv:
        args, _ = ap.parse_known_args()
        t, lr = args.recipe.split(":")
        tables(args.table, t, float(lr))
        return
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", default="hand7-acc-gyro")
    ap.add_argument("--seconds", default="30,60,120")
    ap.add_argument("--subjects", default=",".join(map(str, TEST_SUBJECTS)))
    ap.add_argument("--variants", default="all:5e-4", help="trainable:lr,…")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(bundled_dir() / f"{args.model}.pt")
    meta = ckpt.metadata
    cs = classes_of(meta.classes, meta.class_names)
    names = dict(zip(meta.classes, meta.class_names, strict=True))
    window, rate = meta.window_samples, meta.sample_rate_hz
    mean, std = np.asarray(meta.norm_mean), np.asarray(meta.norm_std)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"model": args.model, "runs": []}
    done = {(r["subject"], r["seconds"], r["trainable"], r["lr"]) for r in results["runs"]}
    for subject in map(int, args.subjects.split(",")):
        for seconds in map(float, args.seconds.split(",")):
            todo = [(t, float(lr)) for t, lr in (v.split(":") for v in args.variants.split(","))
                    if (subject, seconds, t, float(lr)) not in done]
            if not todo:
                continue
            first, rest = wearer_parts(args.data, subject, meta.sensors, names, seconds)
            personal = segments(first, str(subject), meta.sensors, rate)
            test = cut_windows(segments(rest, str(subject), meta.sensors, rate), window, window)
            y = cs.index(test.label)
            keep = np.ones(len(y), bool)
            if "other" in cs.names:
                k = cs.names.index("other")
                other = np.flatnonzero(y == k)
                per_class = int(np.bincount(y[y != k]).sum() / len(set(y[y != k].tolist())))
                if len(other) > per_class:
                    keep[np.random.default_rng(0).choice(other, len(other) - per_class, replace=False)] = False
            x_test = ((test.x[keep] - mean) / std).astype(np.float32)
            y_test = y[keep]
            generic = accuracy(ckpt.model, x_test, y_test, list(cs.names))
            for trainable, lr in todo:
                cfg = PersonaliseConfig(trainable=trainable, lr=lr)
                with tempfile.TemporaryDirectory() as work:
                    t0, w0 = time.process_time(), time.time()
                    report = personalise(ckpt, personal, Path(work), cfg)
                    cpu, wall = time.process_time() - t0, time.time() - w0
                    tuned = load_checkpoint(Path(work) / "checkpoint.pt").model
                held = {h["epoch"]: h for h in report["history"]}
                best = held[report["best_epoch"]]
                run = {"subject": subject, "seconds": seconds, "trainable": trainable, "lr": lr,
                       "generic": generic, "personalised": accuracy(tuned, x_test, y_test, list(cs.names)),
                       "test_windows": int(len(y_test)), "fit_windows": report["subjects"]["train_windows"],
                       "held_out_windows": report["subjects"]["validation_windows"],
                       "held_out_before": held[-1]["val_macro_f1"], "held_out_after": best["val_macro_f1"],
                       "best_epoch": report["best_epoch"], "epochs_run": len(report["history"]) - 1,
                       "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}
                results["runs"].append(run)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(results, indent=1) + "\n")
                print(json.dumps(run), flush=True)


if __name__ == "__main__":
    main()
