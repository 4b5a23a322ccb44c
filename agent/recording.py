"""The recorded-session file format that `replay:FILE` reads and `record` writes.

CSV (optionally gzip-compressed, by the .gz suffix), one raw sensor sample per line, the
sensors interleaved in time order exactly as a watch delivers them:

    # l2mu-recording v1
    time_s,sensor,x,y,z,label
    0.000,acc,0.52,-9.61,1.20,typing

time_s: seconds on the watch's clock (any origin); sensor: acc (m/s²) or gyro (rad/s);
label: the true activity where known, else empty.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from l2mu.agent.errors import RecordingError
from l2mu.agent.events import Sample
from l2mu.model.metadata import SENSOR_UNITS

HEADER_LINE = "# l2mu-recording v1"
COLUMNS = ["time_s", "sensor", "x", "y", "z", "label"]
FIRST_SAMPLE_LINE = 3  # after the format line and the column header; one sample per line


def line_of(index: int) -> int:
    """The file line of the `index`-th sample `read_recording` returned."""
    return FIRST_SAMPLE_LINE + index


def _open(path: Path, mode: str, gz: bool | None = None) -> io.TextIOBase:
    if path.suffix == ".gz" if gz is None else gz:
        return gzip.open(path, mode + "t", encoding="utf-8", newline="")
    return open(path, mode, encoding="utf-8", newline="")


def read_recording(path: Path) -> list[Sample]:
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: recording not found")
    samples: list[Sample] = []
    try:
        with _open(path, "r") as fh:
            first = fh.readline().strip()
            if first != HEADER_LINE:
                raise RecordingError(f"{path}: not an l2mu recording (first line {first[:40]!r})")
            reader = csv.reader(fh)
            header = next(reader, None)
            if header != COLUMNS:
                raise RecordingError(f"{path}: expected columns {','.join(COLUMNS)}")
            for lineno, row in enumerate(reader, FIRST_SAMPLE_LINE):
                try:
                    t, sensor, x, y, z, label = row
                    if sensor not in SENSOR_UNITS:
                        raise ValueError(f"unknown sensor {sensor!r}")
                    samples.append(Sample(float(t), sensor, (float(x), float(y), float(z)), label))
                except ValueError as exc:
                    raise RecordingError(f"{path}:{lineno}: bad row {','.join(row)[:60]!r} ({exc})") from exc
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as exc:
        raise RecordingError(f"{path}: cannot read ({exc})") from exc
    if not samples:
        raise RecordingError(f"{path}: recording holds no samples")
    return samples


def write_recording(path: Path, samples: Iterable[Sample]) -> int:
    path = Path(path)
    n = 0
    tmp = path.with_name(path.name + ".partial")
    with _open(tmp, "w", gz=path.suffix == ".gz") as fh:
        fh.write(HEADER_LINE + "\n")
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for s in samples:
            writer.writerow([f"{s.t:.4f}", s.sensor, *(f"{v:.6g}" for v in s.xyz), s.label])
            n += 1
    tmp.replace(path)
    return n


def sensors_in(samples: Iterable[Sample]) -> set[str]:
    return {s.sensor for s in samples}


def iter_sorted(samples: list[Sample]) -> Iterator[Sample]:
    return iter(sorted(samples, key=lambda s: s.t))


def recording_from_wisdm(
    root: Path, subject: int, activities: Iterable[str], seconds: float, skip_s: float = 20.0
) -> list[Sample]:
    """Raw WISDM watch samples (both sensors, original timestamps) of one subject, `seconds` per
    activity after skipping `skip_s`, activities played back to back on one continuous clock."""
    from l2mu.model.timegrid import sorted_unique
    from l2mu.model.wisdm import ACTIVITY_NAMES, SENSOR_DIRS, read_raw, sensor_file

    streams = {}
    for sensor in SENSOR_DIRS:
        path = sensor_file(root, subject, sensor)
        if path is not None:
            streams[sensor] = read_raw(path)
    if not streams:
        raise RecordingError(f"{root}: no watch data for subject {subject}")
    out: list[Sample] = []
    clock = 0.0
    for code in activities:
        pieces = {}
        for sensor, (acts, ts, xyz) in streams.items():
            sel = acts == code
            if sel.any():
                pieces[sensor] = sorted_unique(ts[sel] * 1e-9, xyz[sel])
        if not pieces:
            raise RecordingError(f"subject {subject} has no recording of activity {code}")
        start = max(t[0] for t, _ in pieces.values()) + skip_s
        end = start + seconds
        chunk = [
            Sample(float(t - start), sensor, tuple(float(v) for v in row), ACTIVITY_NAMES[code])
            for sensor, (ts, vals) in pieces.items()
            for t, row in zip(ts, vals, strict=True)
            if start <= t < end
        ]
        chunk.sort(key=lambda s: s.t)
        out.extend(Sample(clock + s.t, s.sensor, s.xyz, s.label) for s in chunk)
        clock += seconds
    return out
