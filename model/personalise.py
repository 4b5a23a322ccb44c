"""Personalisation: a shipped model fine-tuned on a few minutes of one wearer's own labelled recordings.

It is `l2mu.model.train.train` with the shipped eager checkpoint as starting point (its weights, its
normalisation, its classes), on windows cut from the wearer's recordings exactly as the agent cuts
them. The last `held_out` share of each class's recorded time is kept aside (windows are cut on
each side of that boundary, none straddles it) and early stopping picks the epoch with the best
macro-F1 there; the starting model competes as epoch -1, so a wearer whose data does not help
keeps the shipped weights. The recipe defaults (what learns, learning rate, epochs) were chosen by
`scripts/personalise-measure` on WISDM validation wearers (MODEL.md, "Personalisation").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2mu.agent.errors import RecordingError
from l2mu.model.checkpoint import Checkpoint
from l2mu.model.recordings import Segment, cut_windows, find_wearers, load_segments
from l2mu.model.train import TrainConfig, train
from l2mu.model.trainingdata import ClassSet, TrainingData, other_capped


@dataclass
class PersonaliseConfig:
    # Chosen on the wearers' own held-out data (MODEL.md, "Personalisation"): the readout alone at 5e-4 held out
    # best on average, at about half the CPU of training every weight.
    trainable: str = "readout"  # "all" or "readout" (l2mu.model.train.READOUT)
    lr: float = 5e-4
    epochs: int = 8
    patience: int = 3
    hop: int = 4  # grid samples between windows: a few minutes of data give a few thousand windows
    rotate_deg: float = 15.0  # the wearer's own watch: less orientation spread than across wearers
    time_warp: float = 0.1
    held_out: float = 0.25  # share of each class's recorded time kept for early stopping
    batch_size: int = 64
    seed: int = 0


def classes_of(meta_classes: Sequence[str], meta_names: Sequence[str]) -> ClassSet:
    return ClassSet(tuple(meta_classes), tuple(meta_names))


def wearer_segments(dirs: Sequence[Path], ckpt: Checkpoint) -> list[Segment]:
    """The wearer's recordings, checked and resampled; every label must be one of the model's classes."""
    wearers = find_wearers(dirs)
    if len(wearers) > 1:
        raise RecordingError(f"{', '.join(map(str, dirs))}: personalisation is for one wearer, found "
                             f"{', '.join(sorted(wearers))} (give one wearer's folder)")
    meta = ckpt.metadata
    segments = load_segments(dirs, meta.sensors, meta.sample_rate_hz, meta.window_samples)
    cs = classes_of(meta.classes, meta.class_names)
    for seg in segments:
        if cs.index([seg.label])[0] < 0:
            raise RecordingError(f"{seg.source}: label {seg.label!r} is not one of {meta.name}'s classes "
                                 f"({', '.join(meta.class_names)}, or their codes {','.join(meta.classes)})")
    return segments


def split_held_out(segments: Sequence[Segment], cs: ClassSet, share: float, window: int, rate_hz: float
                   ) -> tuple[list[Segment], list[Segment]]:
    """(fit, held-out): per class, the last `share` of its recorded grid samples (in file order) are held
    out, the boundary segment cut in two; each part keeps at least one window."""
    fit: list[Segment] = []
    held: list[Segment] = []
    index = cs.index([s.label for s in segments])
    for k in sorted(set(index.tolist())):
        mine = [s for s, i in zip(segments, index, strict=True) if i == k]
        total = sum(len(s.values) for s in mine)
        n_held = max(window, int(round(share * total)))
        if total - n_held < window:
            raise RecordingError(f"class {cs.names[k]!r}: only {total / rate_hz:.1f} s recorded; personalisation "
                                 f"needs at least {2 * window / rate_hz:g} s of each class it is given")
        cut = total - n_held  # grid samples of this class before the cut go to fitting
        seen = 0
        for s in mine:
            n = len(s.values)
            if seen + n <= cut:
                fit.append(s)
            elif seen >= cut:
                held.append(s)
            else:
                at = cut - seen
                fit.append(Segment(s.wearer, s.label, s.source, s.values[:at]))
                held.append(Segment(s.wearer, s.label, s.source, s.values[at:]))
            seen += n
    return fit, held


def fit_windows(segments: Sequence[Segment], cs: ClassSet, window: int, hop: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    w = cut_windows(segments, window, hop)
    y = cs.index(w.label)
    keep = other_capped(y, cs.names, rng)  # as in training
    return w.x[keep], y[keep]


def personalise(ckpt: Checkpoint, segments: Sequence[Segment], out: Path, cfg: PersonaliseConfig,
                name: str = "") -> dict:
    """Fine-tune `ckpt` on `segments` (one wearer, labels already checked); writes checkpoint.pt and
    report.json into the folder `out`; returns the training report with the data it was given."""
    meta = ckpt.metadata
    cs = classes_of(meta.classes, meta.class_names)
    window = meta.window_samples
    fit, held = split_held_out(segments, cs, cfg.held_out, window, meta.sample_rate_hz)
    rng = np.random.default_rng(cfg.seed)
    x_tr, y_tr = fit_windows(fit, cs, window, cfg.hop, rng)
    va = cut_windows(held, window, cfg.hop)
    wearer = segments[0].wearer if segments else ""
    seconds = {n: 0.0 for n in cs.names}
    for s in segments:
        seconds[cs.names[cs.index([s.label])[0]]] += len(s.values) / meta.sample_rate_hz
    data = TrainingData(cs, x_tr, y_tr, va.x, cs.index(va.label), va.wearer, split={
        "personal_wearer": wearer, "recorded_seconds": {k: round(v, 1) for k, v in seconds.items() if v},
        "classes_without_data": [k for k, v in seconds.items() if not v], "held_out_share": cfg.held_out,
    })
    tcfg = TrainConfig(
        data=None, out=out, epochs=cfg.epochs, lr=cfg.lr, patience=cfg.patience, rotate_deg=cfg.rotate_deg,
        time_warp=cfg.time_warp, slow_watch_share=0.0, batch_size=cfg.batch_size, trainable=cfg.trainable,
        seed=cfg.seed, plots=False, name=name or (f"{meta.name}-{wearer}" if wearer else ""),
    )
    return train(tcfg, progress=False, data=data, start=ckpt)
