"""`train`, `evaluate` and `personalise` on recordings through the real command line: outputs, export, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import cli_command

TINY = ["--window", "10", "--set", "theta=10", "--set", "hidden=16", "--set", "input_hidden=16", "--set",
        "input_population=4", "--set", "memory_size=4", "--set", "order=4"]  # the tiny_program fixture's size


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, wisdm_root: Path) -> Path:
    from l2mu.agent.recording import recording_from_wisdm, write_recording

    root = tmp_path_factory.mktemp("recordings")
    for subject in (1600, 1601, 1604):
        (root / f"w{subject}").mkdir()
        write_recording(root / f"w{subject}" / "a.csv.gz", recording_from_wisdm(wisdm_root, subject, "FG", 15.0))
    return root


def one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0]


def test_train_on_recordings_then_export_and_evaluate(recorded: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = cli("train", "--recordings", str(recorded), "--out", str(out), "--epochs", "1",
               "--max-steps-per-epoch", "2", "--batch-size", "16", *TINY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "on wearers w1604" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "confusion.png", "curves.png", "report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind
    program = tmp_path / "mine.pte"
    proc = cli("export", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(program))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = cli("evaluate", "--recordings", str(recorded), "--model", str(program), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert {"accuracy", "macro_f1", "per_class", "confusion", "n_windows", "by_wearer"} <= set(result)
    assert set(result["per_class"]) == {"teeth", "typing"}
    assert sorted(result["by_wearer"]) == ["w1600", "w1601", "w1604"]


def test_personalise_writes_a_program_the_agent_loads(recorded: Path, tiny_program: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.pte"
    shutil.copy(tiny_program, base)
    shutil.copy(tiny_program.with_suffix(".json"), base.with_suffix(".json"))
    shutil.copy(tiny_program.parent / "checkpoint.pt", base.with_suffix(".pt"))
    out = tmp_path / "me" / "tiny-me.pte"
    proc = cli("personalise", "--model", str(base), "--recordings", str(recorded / "w1601"), "--out", str(out),
               "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny-me.json", "tiny-me.pt", "tiny-me.pte",
                                                            "tiny-me.report.json"]
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["from"] == "tiny-test" and report["data"]["personal_wearer"] == "w1601"
    assert {"held_out_before", "held_out_after", "recipe", "history"} <= set(report)
    proc = cli("evaluate", "--recordings", str(recorded), "--model", str(out), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["model"] == "tiny-test-w1601"


BAD = {
    "nan": ("0.30,acc,nan,9.8,0,typing", ":8: value is not a finite number"),
    "backwards": ("0.01,acc,0.1,9.8,0.2,typing", ":8: time goes backwards"),
    "unknown sensor": ("0.30,magnet,0.1,9.8,0.2,typing", ":8: bad row"),
}


def bad_recording(folder: Path, row: str) -> Path:
    lines = ["# l2mu-recording v1", "time_s,sensor,x,y,z,label"]
    lines += [f"{i / 20:.3f},{s},0.1,9.8,0.2,typing" for i in range(100) for s in ("acc", "gyro")]
    lines.insert(7, row)
    folder.mkdir(parents=True)
    (folder / "bad.csv").write_text("\n".join(lines) + "\n")
    return folder / "bad.csv"


@pytest.mark.parametrize("kind", sorted(BAD))
def test_train_refuses_a_bad_file_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    row, message = BAD[kind]
    bad = bad_recording(tmp_path / "data" / "anna", row)
    out = tmp_path / "out"
    proc = cli("train", "--recordings", str(tmp_path / "data"), "--out", str(out), "--epochs", "1")
    one_error_line(proc, str(bad) + message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_evaluate_and_personalise_refuse_bad_input_in_one_line(recorded: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    one_error_line(cli("evaluate", "--recordings", str(tmp_path / "empty"), "--model", "hand7-acc-gyro"),
                   "no recordings")
    folder = tmp_path / "anna"
    folder.mkdir()
    (folder / "a.csv").write_text("# l2mu-recording v1\ntime_s,sensor,x,y,z,label\n"
                                  + "".join(f"{i / 20},acc,0,9.8,0,\n{i / 20},gyro,0,0,0,\n" for i in range(80)))
    out = tmp_path / "me.pte"
    one_error_line(cli("personalise", "--model", "hand7-acc-gyro", "--recordings", str(folder), "--out", str(out)),
                   f"{folder / 'a.csv'}: no labels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anna", "empty"]
    one_error_line(cli("train", "--recordings", str(recorded), "--out", str(tmp_path / "o"), "--classes",
                       "typing,cooking"), "'cooking': no training data")
