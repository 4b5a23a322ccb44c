"""The agent's step path (model advanced on every sample) decides exactly as the window path does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from l2mu.agent.bench.stream_accuracy import MemorySource
from l2mu.agent.daemon import Agent, NullSink
from l2mu.agent.events import Sample
from l2mu.agent.pipeline import GridSample, Windower, normalise
from l2mu.agent.recording import recording_from_wisdm
from l2mu.agent.runtime import ExecuTorchClassifier
from l2mu.agent.streaming import StepWindower
from l2mu.model import wisdm


@pytest.fixture(scope="module")
def classifier(tiny_program: Path) -> ExecuTorchClassifier:
    return ExecuTorchClassifier(tiny_program)


HOLE = (17.0, 18.0)  # seconds into the recording without samples


@pytest.fixture(scope="module")
def recording(wisdm_root: Path) -> list[Sample]:
    """Subject 1601's raw samples, 12 s of each of three activities, with a 1 s hole in the middle."""
    samples = recording_from_wisdm(wisdm_root, 1601, "FGP", 12.0)
    t0 = samples[0].t
    kept = [s for s in samples if not HOLE[0] <= s.t - t0 < HOLE[1]]
    assert len(kept) < len(samples)
    return kept


def decisions(samples: list[Sample], clf: ExecuTorchClassifier, inference: str,
              period_s: float) -> list[dict]:
    out: list[dict] = []
    agent = Agent([MemorySource(samples)], clf, NullSink(), period_s,  # type: ignore[list-item]
                  on_decision=lambda p, _truth: out.append(p), smoothing="none", inference=inference)
    session = agent.sessions[0]
    session.wall0, session.t0 = 0.0, 0.0
    for s in session.source.samples:
        agent.handle_sample(session, s)
    return out


@pytest.mark.parametrize("period_s", [1.0, 0.25, 0.15])  # hop 20 > window 10; hop 5 divides it; hop 3 does not
def test_step_path_decides_like_the_window_path_on_a_real_recording(
        recording: list[Sample], classifier: ExecuTorchClassifier, period_s: float) -> None:
    window_path = decisions(recording, classifier, "window", period_s)
    step_path = decisions(recording, classifier, "step", period_s)
    assert len(window_path) > 20
    assert [(p["window_start"], p["window_end"]) for p in step_path] == \
        [(p["window_start"], p["window_end"]) for p in window_path]
    assert [p["raw_activity"] for p in step_path] == [p["raw_activity"] for p in window_path]
    assert [p["scores"] for p in step_path] == [p["scores"] for p in window_path]
    # The recording's hole restarted the windows: no decision's window spans it.
    t0 = recording[0].t
    starts = np.array([p["window_start"] for p in step_path]) - t0
    ends = np.array([p["window_end"] for p in step_path]) - t0
    assert not np.any((starts < HOLE[0]) & (ends >= HOLE[1]))


@pytest.mark.parametrize("hop", [3, 13])  # windows overlap; windows leave samples out
def test_step_windower_counts_equal_forward_and_reset_drops_windows_in_flight(
        classifier: ExecuTorchClassifier, wisdm_root: Path, hop: int) -> None:
    meta = classifier.meta
    rec = wisdm.load_windows(wisdm_root, [1601], activities="F", hop=meta.window_samples, window=40)
    values = rec.x[0]  # 40 real samples on the 20 Hz grid
    grid = [GridSample(i * 0.05, v) for i, v in enumerate(values)]
    step, ref = StepWindower(classifier, meta.window_samples, hop), Windower(meta.window_samples, hop)
    emitted = 0
    for i, g in enumerate(grid):
        if i == 17:  # a gap: both drop what they hold
            step.reset()
            ref.reset()
        a, b = step.push(g), ref.push(g)
        assert (a is None) == (b is None)
        if a is None:
            continue
        emitted += 1
        assert (a.t_start, a.t_end) == (b.t_start, b.t_end)
        np.testing.assert_array_equal(a.counts, classifier.counts(normalise(b.values, meta.norm_mean, meta.norm_std)))
    assert emitted >= (6 if hop < meta.window_samples else 2)


def test_program_from_an_older_export_is_refused(tiny_program: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from l2mu.model.metadata import ModelFileError

    old = tmp_path / "old.pte"
    shutil.copy(tiny_program, old)
    meta = json.loads(tiny_program.with_suffix(".json").read_text())
    older = [{**meta, "state": [{k: v for k, v in part.items() if k != "offset"} for part in meta["state"][1:]]},
             {k: v for k, v in meta.items() if k != "chunk_samples"}]  # a step of one sample; an unrolled forward
    for before in older:
        old.with_suffix(".json").write_text(json.dumps(before))
        with pytest.raises(ModelFileError, match="older l2mu-agent"):
            ExecuTorchClassifier(old)
