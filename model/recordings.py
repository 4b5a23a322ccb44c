"""Labelled recordings (the `replay:` format, l2mu.agent.recording) → the model's windows, by wearer.

Layout of a recordings folder: one sub-folder per wearer, named after the wearer, holding that
wearer's files (`*.csv`, `*.csv.gz`, at any depth); files directly in the folder belong to one
wearer named after the folder itself. The same wearer name under two folders is one wearer.

Every file is checked before anything is trained (`check_samples`): each sensor's clock must
not go backwards, every value must be finite and within `SENSOR_LIMITS`, some line must carry a
label, and the file must hold at least one window of gap-free labelled data. Each stretch of
consecutive samples with one label is then resampled by the agent's own online code
(`l2mu.agent.pipeline.StreamAligner`, from a fresh state, as after a gap), so a model trained
here sees exactly what the agent feeds it from the same watch, whatever the watch's rate or
clock origin; windows are cut inside those stretches (never across a label change or a gap)
the way `l2mu.agent.pipeline.Windower` cuts them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2mu.agent.errors import RecordingError
from l2mu.agent.events import Sample
from l2mu.agent.pipeline import StreamAligner, valid_sample
from l2mu.agent.recording import line_of, read_recording
from l2mu.agent.settings import SENSOR_LIMITS
from l2mu.model.timegrid import cut

SUFFIXES = (".csv", ".csv.gz")


@dataclass(frozen=True)
class Segment:
    """A gap-free stretch of one label from one file, on the model's grid."""

    wearer: str
    label: str
    source: Path
    values: np.ndarray  # [N, C] float32, SI units, channel order sensors × xyz


@dataclass(frozen=True)
class LabelledWindows:
    x: np.ndarray  # [W, T, C] float32, SI units
    label: np.ndarray  # [W] label as written in the files (str)
    wearer: np.ndarray  # [W] wearer name (str)


def is_recording(path: Path) -> bool:
    return path.is_file() and path.name.endswith(SUFFIXES) and not path.name.startswith(".")


def find_wearers(dirs: Sequence[Path]) -> dict[str, list[Path]]:
    """Wearer name → that wearer's recording files (sorted), over every folder given."""
    out: dict[str, list[Path]] = {}
    for root in dirs:
        root = Path(root)
        if not root.is_dir():
            raise RecordingError(f"{root}: not a folder of recordings")
        found = {root.resolve().name: sorted(p for p in root.iterdir() if is_recording(p))}
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found.setdefault(sub.name, []).extend(sorted(p for p in sub.rglob("*") if is_recording(p)))
        if not any(found.values()):
            raise RecordingError(f"{root}: no recordings (*.csv, *.csv.gz) in it or in its wearer folders")
        for wearer, files in found.items():
            if files:
                out.setdefault(wearer, []).extend(files)
    return out


def check_samples(path: Path, samples: Sequence[Sample], sensors: Iterable[str]) -> None:
    """Refuse a file training must not learn from; the message names the file and, where one line
    is to blame, the line."""
    last: dict[str, float] = {}
    labelled = False
    for i, s in enumerate(samples):
        if not valid_sample(s.sensor, s.t, s.xyz):  # the agent's rule, so training refuses what it would drop
            if not all(math.isfinite(v) for v in (s.t, *s.xyz)):
                raise RecordingError(f"{path}:{line_of(i)}: value is not a finite number")
            raise RecordingError(f"{path}:{line_of(i)}: {s.sensor} value beyond ±{SENSOR_LIMITS[s.sensor]:.4g} "
                                 f"(no watch reads that; wrong units?)")
        if s.t < last.get(s.sensor, -math.inf):
            raise RecordingError(f"{path}:{line_of(i)}: time goes backwards ({s.t:g} s after {last[s.sensor]:g} s "
                                 f"on the {s.sensor} clock)")
        last[s.sensor] = s.t
        labelled = labelled or bool(s.label)
    missing = [s for s in sensors if s not in last]
    if missing:
        raise RecordingError(f"{path}: no {'/'.join(missing)} samples (the model needs {'+'.join(sensors)})")
    if not labelled:
        raise RecordingError(f"{path}: no labels (the label column is empty on every line)")


def label_runs(samples: Sequence[Sample]) -> list[tuple[str, list[Sample]]]:
    """Consecutive samples with one label, in file order; unlabelled stretches are left out."""
    runs: list[tuple[str, list[Sample]]] = []
    for s in samples:
        if runs and runs[-1][0] == s.label:
            runs[-1][1].append(s)
        else:
            runs.append((s.label, [s]))
    return [(label, run) for label, run in runs if label]


def resample(samples: Iterable[Sample], sensors: Sequence[str], rate_hz: float) -> list[np.ndarray]:
    """Gap-free pieces [N, C] of the grid the agent computes online from these samples."""
    aligner = StreamAligner(sensors, rate_hz)
    pieces: list[list[np.ndarray]] = [[]]
    for s in samples:
        grid, gap = aligner.push(s.sensor, s.t, s.xyz)
        if gap and pieces[-1]:
            pieces.append([])
        pieces[-1].extend(g.values for g in grid)
    return [np.asarray(p, dtype=np.float32) for p in pieces if p]


def file_segments(path: Path, wearer: str, sensors: Sequence[str], rate_hz: float, window: int) -> list[Segment]:
    samples = read_recording(path)
    check_samples(path, samples, sensors)
    segments = [
        Segment(wearer, label, path, piece)
        for label, run in label_runs(samples)
        for piece in resample(run, sensors, rate_hz)
    ]
    longest = max((len(s.values) for s in segments), default=0)
    if longest < window:
        raise RecordingError(f"{path}: shorter than one window ({window / rate_hz:g} s of gap-free labelled "
                             f"{'+'.join(sensors)} data; the longest stretch is {longest / rate_hz:.1f} s)")
    return segments


def load_segments(dirs: Sequence[Path], sensors: Sequence[str], rate_hz: float, window: int) -> list[Segment]:
    """Every file of every wearer under `dirs`, checked and resampled."""
    return [
        seg
        for wearer, files in find_wearers(dirs).items()
        for path in files
        for seg in file_segments(path, wearer, sensors, rate_hz, window)
    ]


def cut_windows(segments: Sequence[Segment], window: int, hop: int) -> LabelledWindows:
    """Windows starting every `hop` grid samples inside each segment (what `Windower` emits)."""
    x, source = cut([seg.values for seg in segments], window, hop)
    if not len(x):
        return LabelledWindows(x, np.array([], str), np.array([], str))
    return LabelledWindows(x, np.array([segments[i].label for i in source]),
                           np.array([segments[i].wearer for i in source]))
