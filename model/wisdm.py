"""WISDM-2019 smartwatch raw files → aligned 20 Hz accel+gyro recordings → 2 s windows.

Layout read: ``<root>/raw/watch/{accel,gyro}/data_<subject>_{accel,gyro}_watch.txt[.gz]``,
one sample per line, ``subject,activity,timestamp_ns,x,y,z;``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l2mu.model.timegrid import align_streams, cut

ACTIVITY_NAMES: dict[str, str] = {
    "A": "walking", "B": "jogging", "C": "stairs", "D": "sitting", "E": "standing",
    "F": "typing", "G": "teeth", "H": "soup", "I": "chips", "J": "pasta", "K": "drinking",
    "L": "sandwich", "M": "kicking", "O": "catch", "P": "dribbling", "Q": "writing",
    "R": "clapping", "S": "folding",
}
HAND7 = ("F", "G", "O", "P", "Q", "R", "S")
SENSOR_DIRS = {"acc": "accel", "gyro": "gyro"}
SAMPLE_RATE_HZ = 20.0
WINDOW_SAMPLES = 40  # 2 s at 20 Hz, as in the paper

_FILE_RE = re.compile(r"data_(\d+)_(accel|gyro)_watch\.txt(\.gz)?$")


class DatasetError(RuntimeError):
    """The dataset directory or one of its files cannot be used."""


@dataclass(frozen=True)
class Recording:
    """One subject doing one activity, both sensors on a common 20 Hz grid, no gaps inside."""

    subject: int
    activity: str
    t: np.ndarray  # [N] seconds, device clock
    values: np.ndarray  # [N, C] float32, channel order as requested


@dataclass(frozen=True)
class Windows:
    x: np.ndarray  # [W, T, C] float32
    activity: np.ndarray  # [W] activity codes (str)
    subject: np.ndarray  # [W] int


def watch_dir(root: Path) -> Path:
    root = Path(root)
    watch = root / "raw" / "watch"
    if not watch.is_dir():
        raise DatasetError(f"{root}: not a WISDM-2019 directory (missing raw/watch/)")
    return watch


def sensor_file(root: Path, subject: int, sensor: str) -> Path | None:
    folder = watch_dir(root) / SENSOR_DIRS[sensor]
    stem = f"data_{subject}_{SENSOR_DIRS[sensor]}_watch.txt"
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def list_subjects(root: Path, sensors: Sequence[str] = ("acc", "gyro")) -> list[int]:
    """Subjects that have a file for every requested sensor."""
    watch = watch_dir(root)
    per_sensor: list[set[int]] = []
    for sensor in sensors:
        folder = watch / SENSOR_DIRS[sensor]
        found = {int(m.group(1)) for p in folder.glob("data_*") if (m := _FILE_RE.search(p.name))}
        per_sensor.append(found)
    return sorted(set.intersection(*per_sensor)) if per_sensor else []


# Bump when parse_raw's output changes, so stale cache entries are never read.
CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where parsed raw files are kept: $L2MU_CACHE_DIR, else the user's cache directory
    (never the repository or the dataset, which may be read-only)."""
    if env := os.environ.get("L2MU_CACHE_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "l2mu" / "wisdm"


def read_raw(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`parse_raw`, served from a cache keyed by the file's bytes: parsing the text is most of
    the cost of loading the dataset, and training reads the same files on every run."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    key = hashlib.sha256(blob).hexdigest()[:40]
    entry = cache_dir() / f"{key}-v{CACHE_VERSION}.npz"
    try:
        with np.load(entry, allow_pickle=False) as z:
            return z["activity"], z["t_ns"], z["xyz"]
    except (OSError, KeyError, ValueError):
        pass  # absent or damaged: parse again and rewrite it
    parsed = parse_raw(path, blob)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, activity=parsed[0], t_ns=parsed[1], xyz=parsed[2])
        tmp.replace(entry)
    except OSError:
        pass  # a read-only home still trains, only slower
    return parsed


def parse_raw(path: Path, blob: bytes | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse one raw file into (activity codes [N], timestamps ns [N] int64, xyz [N,3] float64)."""
    try:
        if blob is None:
            blob = Path(path).read_bytes()
        raw = gzip.decompress(blob) if Path(path).suffix == ".gz" else blob
        text = raw.decode("ascii", errors="replace")
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    lines = [ln.strip().rstrip(";") for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DatasetError(f"{path}: no samples")
    acts: list[str] = []
    ts: list[int] = []
    xyz: list[tuple[float, float, float]] = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split(",")
        try:
            if len(parts) != 6:
                raise ValueError(f"expected 6 fields, got {len(parts)}")
            acts.append(parts[1].strip())
            ts.append(int(parts[2]))
            xyz.append((float(parts[3]), float(parts[4]), float(parts[5])))
        except ValueError as exc:
            raise DatasetError(f"{path}:{lineno}: malformed line {line[:60]!r} ({exc})") from exc
    return np.array(acts), np.array(ts, dtype=np.int64), np.array(xyz, dtype=np.float64)


def load_subject(
    root: Path, subject: int, sensors: Sequence[str] = ("acc", "gyro"), activities: Iterable[str] | None = None
) -> list[Recording]:
    """All gap-free recordings of one subject, the sensors aligned on the 20 Hz grid."""
    streams = {}
    for sensor in sensors:
        path = sensor_file(root, subject, sensor)
        if path is None:
            raise DatasetError(f"{root}: subject {subject} has no {SENSOR_DIRS[sensor]} file")
        streams[sensor] = read_raw(path)
    wanted = set(activities) if activities is not None else None
    codes = sorted(set.intersection(*(set(np.unique(s[0])) for s in streams.values())))
    recordings: list[Recording] = []
    for code in codes:
        if wanted is not None and code not in wanted:
            continue
        per_sensor = []
        for sensor in sensors:
            acts, ts, xyz = streams[sensor]
            sel = acts == code
            per_sensor.append((ts[sel] * 1e-9, xyz[sel]))
        for t, values in align_streams(per_sensor, SAMPLE_RATE_HZ):
            recordings.append(Recording(subject, code, t, values.astype(np.float32)))
    return recordings


def cut_windows(recordings: Sequence[Recording], window: int = WINDOW_SAMPLES, hop: int = WINDOW_SAMPLES) -> Windows:
    x, source = cut([rec.values for rec in recordings], window, hop)
    if not len(x):
        return Windows(x, np.array([], dtype="<U1"), np.array([], int))
    return Windows(x, np.array([recordings[i].activity for i in source]),
                   np.array([recordings[i].subject for i in source]))


def load_windows(
    root: Path,
    subjects: Sequence[int],
    sensors: Sequence[str] = ("acc", "gyro"),
    activities: Iterable[str] | None = None,
    hop: int = WINDOW_SAMPLES,
    window: int = WINDOW_SAMPLES,
) -> Windows:
    recs: list[Recording] = []
    for subject in subjects:
        recs.extend(load_subject(root, subject, sensors, activities))
    return cut_windows(recs, window=window, hop=hop)
