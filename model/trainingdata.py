"""What a training run learns from: WISDM subjects and/or recorded wearers, as windows split by wearer.

Classes. A model's classes have a code (its `classes` metadata, what `activity_code` says) and a
name (`class_names`, what `activity` says). The WISDM activities keep their letter codes (`F` for
`typing`, …); any other label is its own code. `--classes` is `hand7`, `hand8` (hand7 + `other`,
which takes every activity outside the other classes) or a comma-separated list of names or WISDM
codes; without it, recordings alone train on every label seen (sorted by name) and WISDM data on
hand7. A recording's label matches a class by its name or its code, so recordings labelled
`typing` or `F` and WISDM's activity F are one class.

Validation wearers. `--val-wearers` names them (WISDM subjects by number). Otherwise the WISDM
subjects validate with the fixed split (l2mu.model.splits) and every recorded wearer trains;
recordings alone validate on the last fifth of the wearers in name order (at least one) when
there are two or more, and with one wearer nothing validates (the run keeps the epoch with the
lowest training loss, as `--final` fits do without validation).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from l2mu.agent.errors import RecordingError, UsageError
from l2mu.model import wisdm
from l2mu.model.recordings import LabelledWindows, Segment, cut_windows, load_segments
from l2mu.model.splits import TEST_SUBJECTS, split_subjects

OTHER = "other"
CLASS_SETS = {"hand7": wisdm.HAND7, "hand8": (*wisdm.HAND7, OTHER)}
SENSOR_SETS = {"acc-gyro": ("acc", "gyro"), "acc": ("acc",)}
NAME_CODES = {name: code for code, name in wisdm.ACTIVITY_NAMES.items()}


@dataclass(frozen=True)
class ClassSet:
    codes: tuple[str, ...]
    names: tuple[str, ...]

    def index(self, labels: Iterable[str]) -> np.ndarray:
        """Class index of each label (by name or code); anything else is `other` if present, else -1."""
        lookup = {**{c: i for i, c in enumerate(self.codes)}, **{n: i for i, n in enumerate(self.names)}}
        fallback = lookup.get(OTHER, -1)
        return np.array([lookup.get(str(a), fallback) for a in labels], dtype=np.int64)


def class_set(spec: str | None, labels_seen: Iterable[str] = ()) -> ClassSet:
    """`hand7`, `hand8`, a comma-separated list, or (None / empty) every label seen."""
    if spec in CLASS_SETS:
        codes = CLASS_SETS[spec]
    else:
        items = [p.strip() for p in spec.split(",") if p.strip()] if spec else sorted(set(labels_seen))
        if not items:
            raise UsageError("--classes: no class given and no labels seen")
        codes = tuple(dict.fromkeys(c if c in wisdm.ACTIVITY_NAMES else NAME_CODES.get(c, c) for c in items))
    return ClassSet(codes, tuple(wisdm.ACTIVITY_NAMES.get(c, c) for c in codes))


def labels_for(activities: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Index into classes; activities outside the set map to `other` if present, else -1 (dropped)."""
    index = {c: i for i, c in enumerate(classes)}
    fallback = index.get(OTHER, -1)
    return np.array([index.get(a, fallback) for a in activities], dtype=np.int64)


def labelled_windows(
    root: Path, subjects: list[int], sensors: tuple[str, ...], classes: tuple[str, ...], hop: int,
    rng: np.random.Generator | None = None, window: int = wisdm.WINDOW_SAMPLES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [W,T,C], y [W], subject [W]); with `other` in classes, it is subsampled to a hand class's size."""
    acts = None if OTHER in classes else classes
    w = wisdm.load_windows(root, subjects, sensors, acts, hop=hop, window=window)
    y = labels_for(w.activity, classes)
    keep = other_capped(y, classes, rng or np.random.default_rng(0))
    return w.x[keep], y[keep], w.subject[keep]


def other_capped(y: np.ndarray, classes: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Which windows to keep: every labelled one, but `other` (everything that is not a hand activity, far more
    of it in WISDM) subsampled to the average size of the classes present beside it."""
    keep = y >= 0
    if OTHER not in classes:
        return keep
    k = list(classes).index(OTHER)
    other = np.flatnonzero(y == k)
    rest = y[keep & (y != k)]
    per_class = len(rest) // len(np.unique(rest)) if len(rest) else len(other)
    if len(other) > per_class:
        keep[rng.choice(other, len(other) - per_class, replace=False)] = False
    return keep


@dataclass
class TrainingData:
    classes: ClassSet
    x_tr: np.ndarray  # [W, T, C] raw SI units
    y_tr: np.ndarray
    x_va: np.ndarray
    y_va: np.ndarray
    wearer_va: np.ndarray  # [W] wearer names (WISDM subjects as their numbers)
    split: dict = field(default_factory=dict)  # who trained and validated, for the model's metadata


def recorded_windows(segments: Sequence[Segment], classes: ClassSet, hop: int, window: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w: LabelledWindows = cut_windows(segments, window, hop)
    y = classes.index(w.label)
    keep = y >= 0
    return w.x[keep], y[keep], w.wearer[keep]


def split_recorded(wearers: list[str], val_wearers: list[str] | None, with_wisdm: bool) -> list[str]:
    if val_wearers is not None:
        return [w for w in wearers if w in val_wearers]
    if with_wisdm or len(wearers) < 2:
        return []
    return wearers[-max(1, len(wearers) // 5):]


def wisdm_split(data: Path, sensors: tuple[str, ...], subjects: list[int] | None, val_subjects: list[int] | None,
                val_wearers: list[str] | None) -> tuple[list[int], list[int]]:
    available = wisdm.list_subjects(data, sensors)
    if not available:
        raise wisdm.DatasetError(f"{data}: no subject has all of {', '.join(sensors)}")
    if val_wearers is not None:
        # Named wearers that are none of WISDM's leave it without validation: all its subjects train.
        val_subjects = [int(w) for w in val_wearers if w.isdigit() and int(w) in available]
    if val_subjects == []:  # a final fit (or only recorded wearers named): every pool subject trains
        pool = subjects or [s for s in available if s not in TEST_SUBJECTS]
        return sorted(set(pool) & set(available)), []
    try:
        return split_subjects(available, subjects, val_subjects)
    except ValueError as exc:  # split_subjects' one refusal: no training subject left
        raise UsageError(str(exc)) from None


def load_training_data(
    data: Path | None, recordings: Sequence[Path], sensors: tuple[str, ...], classes: str | None,
    train_hop: int, eval_hop: int, rng: np.random.Generator, subjects: list[int] | None = None,
    val_subjects: list[int] | None = None, val_wearers: list[str] | None = None,
    window: int = wisdm.WINDOW_SAMPLES,
) -> TrainingData:
    segments = load_segments(recordings, sensors, wisdm.SAMPLE_RATE_HZ, window) if recordings else []
    if data is None and not recordings:
        raise UsageError("nothing to train on: give --data (WISDM) and/or --recordings")
    if classes is None and data is not None:
        classes = "hand7"
    cs = class_set(classes, (s.label for s in segments))
    parts_tr, parts_va, split = [], [], {}
    if data is not None:
        train_subj, val_subj = wisdm_split(data, sensors, subjects, val_subjects, val_wearers)
        x_tr, y_tr, _ = labelled_windows(data, train_subj, sensors, cs.codes, train_hop, rng, window=window)
        x_va, y_va, s_va = labelled_windows(data, val_subj, sensors, cs.codes, eval_hop, rng, window=window)
        if not val_subj:
            x_va = np.zeros((0, *x_tr.shape[1:]), np.float32)
        parts_tr.append((x_tr, y_tr))
        parts_va.append((x_va, y_va, s_va.astype(str)))
        split.update(train_subjects=train_subj, validation_subjects=val_subj,
                     test_subjects_held_out=[s for s in TEST_SUBJECTS if s not in train_subj + val_subj])
    else:
        split.update(train_subjects=[], validation_subjects=[])
    if segments:
        wearers = sorted({s.wearer for s in segments})
        val_w = split_recorded(wearers, val_wearers, data is not None)
        x_tr, y_tr, _ = recorded_windows([s for s in segments if s.wearer not in val_w], cs, train_hop, window)
        x_va, y_va, w_va = recorded_windows([s for s in segments if s.wearer in val_w], cs, eval_hop, window)
        parts_tr.append((x_tr, y_tr))
        parts_va.append((x_va, y_va, w_va))
        split.update(train_wearers=[w for w in wearers if w not in val_w], validation_wearers=val_w,
                     recordings=[str(p) for p in recordings])
    if val_wearers is not None:
        known = {str(s) for s in split.get("validation_subjects", [])} | set(split.get("validation_wearers", []))
        unknown = [w for w in val_wearers if w not in known]
        if unknown:
            raise UsageError(f"--val-wearers: no wearer named {', '.join(unknown)} in the data")
    x_tr = np.concatenate([p[0] for p in parts_tr])
    y_tr = np.concatenate([p[1] for p in parts_tr])
    out = TrainingData(cs, x_tr, y_tr, np.concatenate([p[0] for p in parts_va]),
                       np.concatenate([p[1] for p in parts_va]), np.concatenate([p[2] for p in parts_va]), split)
    if len(out.x_tr) == 0:
        where = ", ".join(str(p) for p in ([data] if data else []) + list(recordings))
        raise RecordingError(f"{where}: no training windows of the classes {', '.join(cs.names)}")
    if recordings or (classes not in CLASS_SETS):
        counts = np.bincount(out.y_tr, minlength=len(cs.codes))
        empty = [n for n, c in zip(cs.names, counts, strict=True) if c == 0]
        if empty:
            raise RecordingError(f"class {', '.join(map(repr, empty))}: no training data labelled so "
                                 f"(labels are matched by name or code)")
    return out
