"""The WISDM raw-file loader: formats, alignment of the two sensors, gaps, bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from l2mu.model import wisdm
from l2mu.model.timegrid import align_streams


def write_subject(root: Path, subject: int, rows: dict[str, list[str]], gz: bool) -> None:
    for sensor, lines in rows.items():
        folder = root / "raw" / "watch" / wisdm.SENSOR_DIRS[sensor]
        folder.mkdir(parents=True, exist_ok=True)
        name = f"data_{subject}_{wisdm.SENSOR_DIRS[sensor]}_watch.txt"
        text = "".join(lines)
        if gz:
            with gzip.open(folder / (name + ".gz"), "wt") as fh:
                fh.write(text)
        else:
            (folder / name).write_text(text)


def sine_rows(subject: int, activity: str, t0_ns: int, n: int, period_ns: int, phase: float) -> list[str]:
    rows = []
    for i in range(n):
        t = t0_ns + i * period_ns
        s = t * 1e-9
        rows.append(f"{subject},{activity},{t},{np.sin(s + phase):.7f},{np.cos(s):.7f},{s % 7:.7f};\n")
    return rows


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    # accel at 20 Hz, gyro at 25 Hz starting 13 ms later: alignment has to interpolate.
    write_subject(tmp_path, 1700, {
        "acc": sine_rows(1700, "F", 1_000_000_000, 400, 50_000_000, 0.0),
        "gyro": sine_rows(1700, "F", 1_013_000_000, 500, 40_000_000, 1.0),
    }, gz=True)
    write_subject(tmp_path, 1701, {
        "acc": sine_rows(1701, "F", 1_000_000_000, 400, 50_000_000, 0.0),
        "gyro": sine_rows(1701, "F", 1_013_000_000, 500, 40_000_000, 1.0),
    }, gz=False)
    return tmp_path


def test_plain_and_gzip_files_load_identically(synthetic: Path) -> None:
    assert wisdm.list_subjects(synthetic) == [1700, 1701]
    a = wisdm.load_subject(synthetic, 1700)
    b = wisdm.load_subject(synthetic, 1701)
    assert len(a) == len(b) == 1
    np.testing.assert_array_equal(a[0].values, b[0].values)


def test_alignment_interpolates_both_streams_onto_one_20hz_grid(synthetic: Path) -> None:
    (rec,) = wisdm.load_subject(synthetic, 1700)
    assert rec.values.shape[1] == 6
    np.testing.assert_allclose(np.diff(rec.t), 0.05, atol=1e-9)
    # The grid starts where both sensors have data: the later gyro start.
    assert rec.t[0] == pytest.approx(1.013)
    # Linear interpolation of a slow sine is accurate to ~(dt²/8)·max|f''|.
    np.testing.assert_allclose(rec.values[:, 0], np.sin(rec.t), atol=1e-3)
    np.testing.assert_allclose(rec.values[:, 3], np.sin(rec.t + 1.0), atol=1e-3)
    np.testing.assert_allclose(rec.values[:, 4], np.cos(rec.t), atol=1e-3)


def test_gaps_split_recordings_and_windows_never_span_them() -> None:
    t = np.concatenate([np.arange(0, 5, 0.05), np.arange(7, 12, 0.05)])
    v = np.stack([t, -t, 2 * t], 1)
    pieces = align_streams([(t, v), (t + 0.01, v)], 20.0)
    assert len(pieces) == 2
    assert pieces[0][0][-1] < 5 and pieces[1][0][0] >= 7


def test_unsorted_and_duplicate_timestamps_are_cleaned() -> None:
    t = np.array([0.0, 0.1, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3])
    v = np.arange(len(t), dtype=float)[:, None].repeat(3, 1)
    ((grid, vals),) = align_streams([(t, v)], 20.0)
    assert np.all(np.diff(grid) > 0)
    assert vals.shape == (len(grid), 3)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    rows = sine_rows(1702, "F", 0, 10, 50_000_000, 0.0)
    rows[4] = "1702,F,oops,1,2;\n"
    write_subject(tmp_path, 1702, {"acc": rows, "gyro": sine_rows(1702, "F", 0, 10, 50_000_000, 0.0)}, gz=False)
    with pytest.raises(wisdm.DatasetError, match=r"data_1702_accel_watch.txt:5: malformed"):
        wisdm.load_subject(tmp_path, 1702)


def test_not_a_dataset_directory(tmp_path: Path) -> None:
    with pytest.raises(wisdm.DatasetError, match="missing raw/watch"):
        wisdm.list_subjects(tmp_path)


def test_truncated_gzip_is_a_dataset_error(tmp_path: Path) -> None:
    write_subject(tmp_path, 1703, {"acc": sine_rows(1703, "F", 0, 2000, 50_000_000, 0.0),
                                   "gyro": sine_rows(1703, "F", 0, 10, 50_000_000, 0.0)}, gz=True)
    path = tmp_path / "raw/watch/accel/data_1703_accel_watch.txt.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(wisdm.DatasetError, match="cannot read"):
        wisdm.load_subject(tmp_path, 1703)


def test_real_subject_has_all_activities_as_2s_windows(wisdm_root: Path) -> None:
    subjects = wisdm.list_subjects(wisdm_root)
    assert len(subjects) == 36  # 1637 has gyro only and is left out
    assert 1637 not in subjects and 1637 in wisdm.list_subjects(wisdm_root, ["gyro"])
    recs = wisdm.load_subject(wisdm_root, 1600)
    assert {r.activity for r in recs} == set(wisdm.ACTIVITY_NAMES)
    w = wisdm.cut_windows(recs)
    assert w.x.shape[1:] == (40, 6)
    typing = w.x[w.activity == "F"]
    # ~3 minutes of typing → about 90 non-overlapping 2 s windows; gravity is ~9.8 m/s².
    assert 80 <= len(typing) <= 95
    assert np.linalg.norm(typing[:, :, :3], axis=-1).mean() == pytest.approx(9.8, abs=0.6)
