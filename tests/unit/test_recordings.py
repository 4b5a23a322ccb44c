"""Recordings as training data: the wearer layout, the agent's own resampling, and every kind of bad file."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest

from l2mu.agent.errors import RecordingError, UsageError
from l2mu.agent.events import Sample
from l2mu.agent.pipeline import StreamAligner, Windower
from l2mu.agent.recording import read_recording, write_recording
from l2mu.agent.settings import SENSOR_LIMITS
from l2mu.model.recordings import cut_windows, find_wearers, load_segments
from l2mu.model.staging import staged_dir, staged_files
from l2mu.model.trainingdata import ClassSet, class_set, load_training_data

SENSORS = ("acc", "gyro")


def motion(seconds: float, rate_hz: float = 20.0, label: str = "typing", t0: float = 0.0, phase: float = 0.0,
           gyro: bool = True) -> list[Sample]:
    """A smooth, plausible wrist motion: acc around gravity, gyro a slow turn; sensors interleaved in time."""
    out = []
    for i in range(int(seconds * rate_hz)):
        t = t0 + i / rate_hz
        w = 2 * math.pi * (0.7 + phase) * (t - t0)
        out.append(Sample(t, "acc", (math.sin(w), 9.81 + 0.5 * math.cos(w), 0.2 * math.sin(3 * w)), label))
        if gyro:
            out.append(Sample(t + 0.3 / rate_hz, "gyro", (0.3 * math.cos(w), 0.1, -0.2 * math.sin(w)), label))
    return out


def write(path: Path, samples: list[Sample]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_recording(path, samples)
    return path


def write_text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def good_lines(n: int = 60, label: str = "typing") -> list[str]:
    lines = ["# l2mu-recording v1", "time_s,sensor,x,y,z,label"]
    for i in range(n):
        lines += [f"{i / 20:.3f},acc,0.1,9.8,0.2,{label}", f"{i / 20 + 0.01:.3f},gyro,0.1,0.0,0.2,{label}"]
    return lines


def test_wearers_are_sub_folders_and_loose_files_belong_to_the_folder(tmp_path: Path) -> None:
    write(tmp_path / "anna" / "day1" / "a.csv.gz", motion(5))
    write(tmp_path / "ben" / "b.csv", motion(5))
    write(tmp_path / "loose.csv", motion(5))
    (tmp_path / "notes.txt").write_text("not a recording")
    wearers = find_wearers([tmp_path])
    assert sorted(wearers) == ["anna", "ben", tmp_path.name]
    assert [p.name for p in wearers["anna"]] == ["a.csv.gz"]


def test_windows_are_what_the_agents_windower_emits(tmp_path: Path) -> None:
    samples = read_recording(write(tmp_path / "w" / "a.csv", motion(12, rate_hz=20)))  # as stored: 6 digits
    seg = load_segments([tmp_path], SENSORS, 20.0, 40)
    ours = cut_windows(seg, 40, 10)
    aligner, windower, theirs = StreamAligner(list(SENSORS), 20.0), Windower(40, 10), []
    for s in samples:
        grid, _ = aligner.push(s.sensor, s.t, s.xyz)
        theirs += [w.values for g in grid if (w := windower.push(g)) is not None]
    assert len(ours.x) == len(theirs) > 10
    np.testing.assert_allclose(ours.x, np.stack(theirs), rtol=1e-6)
    assert set(ours.label) == {"typing"} and set(ours.wearer) == {"w"}


def test_any_rate_and_clock_origin_give_the_same_windows(tmp_path: Path) -> None:
    write(tmp_path / "slow" / "a.csv", motion(12, rate_hz=20, t0=0.0))
    write(tmp_path / "fast" / "a.csv", motion(12, rate_hz=100, t0=1.7e9))
    seg = load_segments([tmp_path], SENSORS, 20.0, 40)
    by = {s.wearer: cut_windows([s], 40, 40) for s in seg}
    assert abs(len(by["slow"].x) - len(by["fast"].x)) <= 1  # the filter's look-ahead costs a fraction of a second
    assert np.abs(by["fast"].x.mean((0, 1)) - by["slow"].x.mean((0, 1))).max() < 0.05


def test_label_changes_and_gaps_are_never_inside_a_window(tmp_path: Path) -> None:
    samples = motion(6, label="typing") + motion(6, label="teeth", t0=6.0) + motion(6, label="", t0=12.0)
    samples += motion(6, label="teeth", t0=30.0)  # after an 12 s gap
    write(tmp_path / "w" / "a.csv", samples)
    seg = load_segments([tmp_path], SENSORS, 20.0, 40)
    assert [s.label for s in seg] == ["typing", "teeth", "teeth"]
    assert all(len(s.values) <= 6 * 20 for s in seg)


def test_classes_match_recorded_labels_by_name_or_code() -> None:
    cs = class_set("typing,cooking,G")
    assert cs.codes == ("F", "cooking", "G") and cs.names == ("typing", "cooking", "teeth")
    assert cs.index(["typing", "F", "teeth", "G", "cooking", "dancing"]).tolist() == [0, 0, 2, 2, 1, -1]
    assert class_set(None, ["teeth", "cooking", "teeth"]).names == ("cooking", "teeth")
    assert ClassSet(("F", "other"), ("typing", "other")).index(["dancing"]).tolist() == [1]
    assert class_set("hand8").codes[-1] == "other"


def test_validation_wearers_are_chosen_or_named(tmp_path: Path) -> None:
    for name in ("anna", "ben", "cleo"):
        write(tmp_path / name / "a.csv", motion(8, label="typing") + motion(8, label="teeth", t0=20))
    rng = np.random.default_rng(0)
    auto = load_training_data(None, [tmp_path], SENSORS, None, 20, 40, rng)
    assert auto.split["validation_wearers"] == ["cleo"] and auto.split["train_wearers"] == ["anna", "ben"]
    assert auto.classes.names == ("teeth", "typing") and set(auto.wearer_va) == {"cleo"}
    named = load_training_data(None, [tmp_path], SENSORS, None, 20, 40, rng, val_wearers=["anna"])
    assert named.split["validation_wearers"] == ["anna"]
    with pytest.raises(UsageError, match="no wearer named dora"):
        load_training_data(None, [tmp_path], SENSORS, None, 20, 40, rng, val_wearers=["dora"])


def test_a_class_with_no_data_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "anna" / "a.csv", motion(8, label="typing"))
    with pytest.raises(RecordingError, match="'cooking': no training data"):
        load_training_data(None, [tmp_path], SENSORS, "typing,cooking", 20, 40, np.random.default_rng(0))


BAD_FILES = {
    "unknown sensor": (lambda: good_lines()[:5] + ["0.5,magnet,1,2,3,typing"], r"a\.csv:6: .*unknown sensor"),
    "wrong header": (lambda: ["# l2mu-recording v1", "t,sensor,x,y,z,label", *good_lines()[2:]],
                     "expected columns"),
    "missing header": (lambda: good_lines()[1:], "not an l2mu recording"),
    "no labels": (lambda: good_lines(label=""), r"a\.csv: no labels"),
    "shorter than a window": (lambda: good_lines(n=30), r"a\.csv: shorter than one window"),
    "time backwards": (lambda: good_lines()[:20] + ["0.1,acc,0,9.8,0,typing"] + good_lines()[20:],
                       r"a\.csv:21: time goes backwards"),
    "nan": (lambda: good_lines()[:7] + ["0.35,acc,nan,9.8,0,typing"] + good_lines()[9:], r"a\.csv:8: .*finite"),
    "infinite": (lambda: good_lines()[:7] + ["0.35,gyro,0,inf,0,typing"] + good_lines()[9:], r"a\.csv:8: .*finite"),
    "beyond range": (lambda: good_lines()[:7] + ["0.35,acc,0,1e30,0,typing"] + good_lines()[9:],
                     r"a\.csv:8: acc value beyond"),
    "no gyro": (lambda: [ln for ln in good_lines() if ",gyro," not in ln], r"a\.csv: no gyro samples"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_file_is_refused_with_its_name_and_line(tmp_path: Path, kind: str) -> None:
    lines, pattern = BAD_FILES[kind]
    write_text(tmp_path / "anna" / "a.csv", lines())
    with pytest.raises(RecordingError, match=pattern):
        load_segments([tmp_path], SENSORS, 20.0, 40)


def test_a_damaged_gzip_is_one_error(tmp_path: Path) -> None:
    blob = gzip.compress("\n".join(good_lines()).encode())
    (tmp_path / "anna").mkdir()
    (tmp_path / "anna" / "a.csv.gz").write_bytes(blob[: len(blob) // 2] + b"\0" * 40)
    with pytest.raises(RecordingError, match=r"a\.csv\.gz: cannot read"):
        load_segments([tmp_path], SENSORS, 20.0, 40)


def test_the_range_is_twice_a_watchs_widest(tmp_path: Path) -> None:
    assert SENSOR_LIMITS["acc"] == pytest.approx(2 * 16 * 9.80665)
    assert SENSOR_LIMITS["gyro"] == pytest.approx(2 * 2000 * math.pi / 180)
    fast_turn = [Sample(s.t, s.sensor, (30.0, 0.0, 0.0) if s.sensor == "gyro" else s.xyz, s.label)
                 for s in motion(4)]  # 1700 °/s: a real watch can read that
    write(tmp_path / "anna" / "a.csv", fast_turn)
    assert load_segments([tmp_path], SENSORS, 20.0, 40)


def test_a_folder_without_recordings_and_a_wearer_with_only_unlabelled_files(tmp_path: Path) -> None:
    (tmp_path / "empty" / "anna").mkdir(parents=True)
    with pytest.raises(RecordingError, match="no recordings"):
        find_wearers([tmp_path / "empty"])
    with pytest.raises(RecordingError, match="not a folder"):
        find_wearers([tmp_path / "absent"])
    write(tmp_path / "data" / "anna" / "a.csv", motion(5, label=""))
    write(tmp_path / "data" / "anna" / "b.csv", motion(5, label=""))
    with pytest.raises(RecordingError, match=r"anna/a\.csv: no labels"):
        load_segments([tmp_path / "data"], SENSORS, 20.0, 40)


def test_staged_output_lands_whole_or_not_at_all(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RecordingError), staged_dir(out) as work:
        (work / "checkpoint.pt").write_text("half")
        raise RecordingError("bad input")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with staged_dir(out) as work:
        (work / "checkpoint.pt").write_text("whole")
    assert (out / "checkpoint.pt").read_text() == "whole" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    program = tmp_path / "me.pte"
    with pytest.raises(RecordingError), staged_files(program, (".json",)) as target:
        target.write_text("half")
        raise RecordingError("bad input")
    assert not program.exists()
    with staged_files(program, (".json",)) as target:
        target.write_text("p")
        target.with_suffix(".json").write_text("m")
    assert program.read_text() == "p" and program.with_suffix(".json").read_text() == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.json", "me.pte", "out"]
