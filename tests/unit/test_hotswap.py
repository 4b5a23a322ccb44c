"""Hot model swap in the main loop: windows in flight finish on the old model, the new one takes every window
that begins after the swap, `seq` goes on; a program that cannot be used leaves the old one running."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from l2mu.agent.bench.stream_accuracy import MemorySource
from l2mu.agent.daemon import Agent, NullSink
from l2mu.agent.events import Sample, WatchConnected
from l2mu.agent.recording import recording_from_wisdm
from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model

SWAP_AT = 9.3  # seconds into the recording


@pytest.fixture(scope="module")
def recording(wisdm_root: Path) -> list[Sample]:
    return recording_from_wisdm(wisdm_root, 1600, "FQP", seconds=7)


@pytest.fixture(scope="module")
def programs() -> dict[str, ExecuTorchClassifier]:
    names = ("hand8-acc-gyro", "hand7-acc-gyro", "hand8-acc")
    return {name: ExecuTorchClassifier(resolve_model(name)) for name in names}


def decide(samples: list[Sample], clf: ExecuTorchClassifier, inference: str = "step",
           loader: Callable[[], ExecuTorchClassifier] | None = None, swap_at: float | None = None,
           source: MemorySource | None = None) -> tuple[list[dict], Agent, list[bool]]:
    out: list[dict] = []
    source = source or MemorySource(samples)
    agent = Agent([source], clf, NullSink(), 1.0, on_decision=lambda p, _t: out.append(p), smoothing="none",
                  inference=inference, loader=loader)
    session = agent.sessions[0]
    session.wall0, session.t0 = 0.0, 0.0
    results = []
    for s in source.samples:
        if swap_at is not None and not results and s.t >= swap_at:
            results.append(agent.reload_model())
        agent.handle_sample(session, s)
    return out, agent, results


def without_model(p: dict) -> dict:
    return {k: v for k, v in p.items() if k not in ("model", "model_id", "seq")}


@pytest.mark.parametrize("inference", ["step", "window"])
def test_same_grid_swap_finishes_windows_in_flight_on_the_old_model(
        recording: list[Sample], programs: dict, inference: str) -> None:
    old, new = programs["hand8-acc-gyro"], programs["hand7-acc-gyro"]
    all_old, _, _ = decide(recording, old, inference)
    all_new, _, _ = decide(recording, new, inference)
    got, agent, ok = decide(recording, old, inference, loader=lambda: new, swap_at=SWAP_AT)
    assert ok == [True] and agent.classifier is new and agent.swaps == 1
    # No decision lost or moved: the same windows as without a swap, seq unbroken.
    assert [(p["window_start"], p["window_end"]) for p in got] == \
        [(p["window_start"], p["window_end"]) for p in all_old]
    assert [p["seq"] for p in got] == list(range(len(got)))
    models = [p["model"] for p in got]
    k = models.index("hand7-acc-gyro")
    assert models == ["hand8-acc-gyro"] * k + ["hand7-acc-gyro"] * (len(got) - k)
    assert {p["model_id"] for p in got[:k]} == {old.model_id} and {p["model_id"] for p in got[k:]} == {new.model_id}
    # Windows that began before the swap are the old model's, exactly; the rest the new one's, exactly.
    assert got[:k] == all_old[:k]
    assert [without_model(p) for p in got[k:]] == [without_model(p) for p in all_new[k:]]
    assert got[k - 1]["window_start"] < SWAP_AT <= got[k]["window_start"]
    assert got[k - 1]["window_end"] > SWAP_AT  # it was in flight and still finished
    assert not agent.sessions[0].retiring  # the old model's chains are all given back


def test_two_programs_of_one_name_are_told_apart_by_model_id(recording: list[Sample], programs: dict,
                                                            tmp_path: Path) -> None:
    path = copy_program("hand7-acc-gyro", tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps({**meta, "name": "hand8-acc-gyro"}))  # e.g. retrained in place
    old, new = programs["hand8-acc-gyro"], ExecuTorchClassifier(path)
    got, _, ok = decide(recording, old, loader=lambda: new, swap_at=SWAP_AT)
    assert ok == [True] and {p["model"] for p in got} == {"hand8-acc-gyro"}
    ids = [p["model_id"] for p in got]
    k = ids.index(new.model_id)
    assert ids == [old.model_id] * k + [new.model_id] * (len(ids) - k) and old.model_id != new.model_id
    assert new.model_id == meta["program_sha256"][:12]


def test_step_and_window_paths_swap_alike(recording: list[Sample], programs: dict) -> None:
    old, new = programs["hand8-acc-gyro"], programs["hand7-acc-gyro"]
    step, _, _ = decide(recording, old, "step", loader=lambda: new, swap_at=SWAP_AT)
    window, _, _ = decide(recording, old, "window", loader=lambda: new, swap_at=SWAP_AT)
    assert step == window


def test_another_grid_restarts_the_windows(recording: list[Sample], programs: dict,
                                           caplog: pytest.LogCaptureFixture) -> None:
    old, new = programs["hand8-acc-gyro"], programs["hand8-acc"]  # other sensors: another state layout
    with caplog.at_level(logging.INFO, logger="l2mu.agent.daemon"):
        got, _, ok = decide(recording, old, loader=lambda: new, swap_at=SWAP_AT)
    assert ok == [True] and "restart" in caplog.text
    assert [p["seq"] for p in got] == list(range(len(got)))
    old_ones = [p for p in got if p["model"] == "hand8-acc-gyro"]
    new_ones = [p for p in got if p["model"] == "hand8-acc"]
    assert got == old_ones + new_ones and old_ones and new_ones
    assert all(p["window_end"] < SWAP_AT for p in old_ones)  # the windows in flight were dropped
    assert all(p["window_start"] >= SWAP_AT for p in new_ones)


def copy_program(name: str, folder: Path) -> Path:
    src = resolve_model(name)
    shutil.copy(src, folder / "m.pte")
    shutil.copy(src.with_suffix(".json"), folder / "m.json")
    return folder / "m.pte"


@pytest.mark.parametrize("damage,message", [
    ("missing", "model file not found"),
    ("truncated", "does not match its metadata"),
    ("foreign", "model metadata format 2 is not supported"),
    ("not-json", "not valid JSON"),
    ("other-window", "ExecuTorch cannot load it"),  # metadata of another version of the model beside it
])
def test_a_program_that_fails_to_load_leaves_the_old_one_running(
        recording: list[Sample], programs: dict, tmp_path: Path, damage: str, message: str,
        caplog: pytest.LogCaptureFixture) -> None:
    old = programs["hand8-acc-gyro"]
    path = copy_program("hand7-acc-gyro", tmp_path)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "foreign":
        meta = json.loads(path.with_suffix(".json").read_text())
        path.with_suffix(".json").write_text(json.dumps({**meta, "format_version": 2}))
    elif damage == "not-json":
        path.with_suffix(".json").write_text("{")
    else:
        meta = json.loads(path.with_suffix(".json").read_text())
        path.with_suffix(".json").write_text(json.dumps({**meta, "window_samples": 20}))
    all_old, _, _ = decide(recording, old)
    with caplog.at_level(logging.INFO, logger="l2mu.agent.daemon"):
        got, agent, ok = decide(recording, old, loader=lambda: ExecuTorchClassifier(resolve_model(str(path))),
                                swap_at=SWAP_AT)
    assert ok == [False] and agent.classifier is old and agent.failed_swaps == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0].startswith(f"model reload failed, still running hand8-acc-gyro ({old.model_id})")
    assert message in errors[0]
    assert got == all_old


def test_a_program_needing_a_sensor_the_recording_lacks_is_refused(
        recording: list[Sample], programs: dict, caplog: pytest.LogCaptureFixture) -> None:
    acc_only = [s for s in recording if s.sensor == "acc"]
    old = programs["hand8-acc"]
    all_old, _, _ = decide(acc_only, old)
    with caplog.at_level(logging.ERROR, logger="l2mu.agent.daemon"):
        got, _, ok = decide(acc_only, old, loader=lambda: programs["hand8-acc-gyro"], swap_at=SWAP_AT)
    assert ok == [False] and got == all_old
    assert "needs gyro, which this source lacks" in caplog.text


class LiveSource(MemorySource):
    sensors_known = False  # a live watch says what it streams once connected


def test_a_live_watch_without_gyro_gets_the_new_programs_acc_only_twin(
        recording: list[Sample], programs: dict, caplog: pytest.LogCaptureFixture) -> None:
    acc_only = [s for s in recording if s.sensor == "acc"]
    source = LiveSource(acc_only)
    agent = Agent([source], programs["hand8-acc-gyro"], NullSink(), 1.0, smoothing="none")
    session = agent.sessions[0]
    agent.adopt_sensors(session, WatchConnected(("acc",), "infinitime"))
    assert session.classifier is not None and session.classifier.meta.name == "hand8-acc"
    # hand7 has no accelerometer-only twin with its classes: refused, nothing changes.
    agent.loader = lambda: programs["hand7-acc-gyro"]
    with caplog.at_level(logging.ERROR, logger="l2mu.agent.daemon"):
        assert not agent.reload_model()
    assert "has no gyro" in caplog.text and session.classifier.meta.name == "hand8-acc"
    # hand8-acc-gyro again: its twin is loaded afresh for this watch.
    before = session.classifier
    agent.loader = lambda: ExecuTorchClassifier(resolve_model("hand8-acc-gyro"))
    assert agent.reload_model()
    assert session.classifier is not before and session.classifier.meta.name == "hand8-acc"


class NotifyRecorder:
    """What the agent tells systemd, as (kind, status) pairs."""

    watchdog_s = None

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def ready(self, status: str) -> bool:
        self.sent.append(("READY", status))
        return True

    def reloading(self, status: str) -> bool:
        self.sent.append(("RELOADING", status))
        return True


@pytest.mark.parametrize("app_reports", [True, False])
def test_ready_after_a_reload_comes_from_the_app_when_it_reports(recording: list[Sample], programs: dict,
                                                                 app_reports: bool) -> None:
    """The broker's state (compose's line) must survive `systemctl reload`, successful or not."""
    old, new = programs["hand8-acc-gyro"], programs["hand7-acc-gyro"]
    notifier = NotifyRecorder()
    loads = iter([lambda: new, lambda: ExecuTorchClassifier(Path("/nonexistent/model.pte"))])
    agent = Agent([MemorySource(recording)], old, NullSink(), notifier=notifier,  # type: ignore[arg-type]
                  loader=lambda: next(loads)())
    if app_reports:
        agent.ready_again = lambda note: notifier.ready(f"{note}running: model {agent.classifier.meta.name}; "
                                                        "broker b:1 not reached")
    assert agent.reload_model() and not agent.reload_model()
    readies = [status for kind, status in notifier.sent if kind == "READY"]
    line = ("running: model hand7-acc-gyro; broker b:1 not reached" if app_reports
            else f"running: 1 watch(es), model hand7-acc-gyro {new.model_id}")
    assert readies == [line, "reload failed; " + line]
