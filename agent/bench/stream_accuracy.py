"""Stream-level accuracy of the published activity on a replayed, labelled recording.

Window accuracy (`evaluate`) asks "is each window classified right?". A subscriber sees something
else: a state that holds from one decision to the next. Stream accuracy is the fraction of
recording time during which the published activity equals the true label, so a wrong decision
that holds for a second costs a second, and smoothing's lag at an activity change is counted.

Time runs from the first decision (nothing can be published before the first window is full) to
the last labelled sample; at time t the published activity is that of the latest decision whose
window ended at or before t, the truth is the label of the latest sample at or before t.
The recording is fed through the agent's own pipeline (`Agent.handle_sample`) with no broker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from l2mu.agent.compose import build_agent
from l2mu.agent.daemon import Agent
from l2mu.agent.events import Sample
from l2mu.agent.recording import sensors_in
from l2mu.agent.runtime import ExecuTorchClassifier
from l2mu.agent.settings import DEFAULTS

GRID_S = 0.05


@dataclass
class MemorySource:
    """A recording already in memory, played unpaced (what `Agent` needs of a source)."""

    samples: list[Sample]
    watch_id: str = "eval"
    speed: float = 0.0
    sensors: set[str] = field(init=False)
    sensors_known = True
    connecting = False

    def __post_init__(self) -> None:
        self.samples = sorted(self.samples, key=lambda s: s.t)
        self.sensors = sensors_in(self.samples)


@dataclass
class StreamReport:
    smoothing: str
    smoothing_window: int
    decisions: int
    seconds: float  # recording time scored
    window_accuracy_raw: float  # labelled decisions whose raw_activity equals the window's majority label
    window_accuracy: float  # the same for the published (smoothed) activity
    stream_accuracy_raw: float  # time-weighted, if raw_activity were published
    stream_accuracy: float  # time-weighted, the published activity
    changes_raw: int  # times raw_activity differs from the previous decision's
    changes: int  # times the published activity differs from the previous decision's

    def as_dict(self) -> dict:
        return asdict(self)


def _stream_accuracy(decision_t: np.ndarray, published: list[str], label_t: np.ndarray,
                     labels: list[str]) -> tuple[float, float]:
    if len(decision_t) == 0 or len(label_t) == 0 or label_t[-1] <= decision_t[0]:
        return float("nan"), 0.0
    grid = np.arange(decision_t[0], label_t[-1], GRID_S)
    shown = np.asarray(published, dtype=object)[np.searchsorted(decision_t, grid, side="right") - 1]
    truth = np.asarray(labels, dtype=object)[np.searchsorted(label_t, grid, side="right") - 1]
    return float(np.mean(shown == truth)), float(label_t[-1] - decision_t[0])


def _changes(seq: list[str]) -> int:
    return sum(a != b for a, b in zip(seq, seq[1:], strict=False))


def measure_stream(samples: list[Sample], classifier: ExecuTorchClassifier, smoothing: str,
                   smoothing_window: int, decision_period_s: float = DEFAULTS.decision_period) -> StreamReport:
    source = MemorySource(samples)
    records: list[tuple[dict, str]] = []
    settings = DEFAULTS.replace(smoothing=smoothing, smoothing_window=smoothing_window,
                                decision_period=decision_period_s)
    # The agent `run` builds, publishing nowhere: the payloads are read as they are made.
    with build_agent(settings, sources=[source], classifier=classifier, publish=False,
                     on_decision=lambda p, truth: records.append((p, truth))) as app:
        _feed(app.agent, source)
    return _report(records, source, smoothing, smoothing_window)


def _feed(agent: Agent, source: MemorySource) -> None:
    session = agent.sessions[0]
    # Anchor the clock mapping at 0: payload times are then the recording's own, whatever the wall clock.
    session.wall0, session.t0 = 0.0, 0.0
    for s in source.samples:
        agent.handle_sample(session, s)


def _report(records: list[tuple[dict, str]], source: MemorySource, smoothing: str,
            smoothing_window: int) -> StreamReport:
    decision_t = np.array([p["window_end"] for p, _ in records])
    labelled = [s for s in source.samples if s.label]
    label_t = np.array([s.t for s in labelled])
    labels = [s.label for s in labelled]
    raw = [p["raw_activity"] for p, _ in records]
    shown = [p["activity"] for p, _ in records]
    scored = [(p, truth) for p, truth in records if truth]
    stream_raw, seconds = _stream_accuracy(decision_t, raw, label_t, labels)
    stream, _ = _stream_accuracy(decision_t, shown, label_t, labels)
    return StreamReport(
        smoothing=smoothing, smoothing_window=smoothing_window, decisions=len(records), seconds=round(seconds, 2),
        window_accuracy_raw=float(np.mean([p["raw_activity"] == t for p, t in scored])) if scored else float("nan"),
        window_accuracy=float(np.mean([p["activity"] == t for p, t in scored])) if scored else float("nan"),
        stream_accuracy_raw=stream_raw, stream_accuracy=stream, changes_raw=_changes(raw), changes=_changes(shown),
    )


def measure_wisdm_subject(root: Path, subject: int, classifier: ExecuTorchClassifier, kinds: list[str],
                          smoothing_window: int, activities: str, seconds: float) -> dict:
    """Every smoothing kind on one held-out subject's recording (activities back to back)."""
    from l2mu.agent.recording import recording_from_wisdm

    codes = [c for c in activities if c in classifier.meta.classes]
    samples = recording_from_wisdm(root, subject, codes, seconds)
    return {
        "subject": subject, "model": classifier.meta.name, "activities": "".join(codes),
        "seconds_per_activity": seconds,
        "results": [measure_stream(samples, classifier, k, smoothing_window).as_dict() for k in kinds],
    }
