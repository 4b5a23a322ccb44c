"""The agent's main loop: every watch's samples → pipeline → model → decision → MQTT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from l2mu.agent.events import Sample, StreamGap, WatchConnected
from l2mu.agent.pipeline import StreamAligner, Windower, normalise
from l2mu.agent.runtime import ExecuTorchClassifier, decision_from_counts
from l2mu.agent.sdnotify import Notifier, watchdog_pings
from l2mu.agent.settings import DEFAULTS
from l2mu.agent.smoothing import Smoother, make_smoother
from l2mu.agent.sources import Source, SourceError
from l2mu.agent.streaming import ChainPool, StepWindower
from l2mu.agent.watch_state import WatchStateBoard

log = logging.getLogger(__name__)


class DecisionSink(Protocol):
    """Where decisions go: the MQTT publisher, or nothing when a recording is only measured."""

    def publish_decision(self, watch_id: str, payload: dict) -> object: ...

    def publish_scores(self, watch_id: str, payload: dict) -> object: ...


class NullSink:
    def publish_decision(self, watch_id: str, payload: dict) -> None:
        pass

    def publish_scores(self, watch_id: str, payload: dict) -> None:
        pass


@dataclass
class WatchSession:
    """One watch's pipeline state and its decision counter (`seq` never skips)."""

    source: Source
    aligner: StreamAligner
    windower: Windower | StepWindower
    smoother: Smoother
    seq: int = 0
    wall0: float | None = None
    t0: float = 0.0
    recent_labels: deque = field(default_factory=lambda: deque(maxlen=400))
    correct: int = 0
    labelled: int = 0
    # Monotonic time of the last sample out of the source; None once the source has ended for good.
    last_progress: float | None = field(default_factory=time.monotonic)
    # The model this watch feeds when it is not the agent's (a watch without the sensors that one needs).
    classifier: ExecuTorchClassifier | None = None
    # Grid samples (with the arrival time of the source's sample that completed each) and gap restarts
    # (None) waiting for the next tick, in order.
    pending: deque = field(default_factory=deque)
    # Arrival time (the source's `arrival`, monotonic) of the newest sample the decision being made used.
    arrival: float | None = None

    def unix_time(self, t: float) -> float:
        # Map the watch clock onto wall time, anchored at the first sample, scaled by replay speed.
        speed = self.source.speed or 1.0
        assert self.wall0 is not None
        return self.wall0 + (t - self.t0) / speed


def build_payload(session: WatchSession, clf: ExecuTorchClassifier, window, decision,  # noqa: ANN001
                  smoothed: int) -> dict:
    meta = clf.meta
    return {
        "watch": session.source.watch_id,
        "activity": meta.class_names[smoothed],
        "activity_code": meta.classes[smoothed],
        # The window's own probability of the published activity, so it reads the same for every smoother.
        "confidence": round(float(decision.probabilities[smoothed]), 4),
        "raw_activity": meta.class_names[decision.index],
        "scores": {n: round(float(p), 4) for n, p in zip(meta.class_names, decision.probabilities, strict=True)},
        "window_start": round(session.unix_time(window.t_start), 3),
        "window_end": round(session.unix_time(window.t_end), 3),
        "model": meta.name,
        "seq": session.seq,
    }


def build_scores_payload(payload: dict, decision) -> dict:  # noqa: ANN001
    """The per-window evidence for <prefix>/scores/<watch>: raw spike counts besides the probabilities."""
    keys = ("watch", "seq", "window_start", "window_end", "model", "raw_activity", "scores")
    return {**{k: payload[k] for k in keys}, "counts": [round(float(c), 4) for c in decision.counts]}


@dataclass
class Agent:
    sources: list[Source]
    classifier: ExecuTorchClassifier
    publisher: DecisionSink
    decision_period_s: float = DEFAULTS.decision_period
    on_decision: Callable[[dict, str], None] | None = None  # payload, true label ("" if unknown)
    smoothing: str = DEFAULTS.smoothing
    smoothing_window: int = DEFAULTS.smoothing_window
    raw_scores: bool = DEFAULTS.raw_scores
    # "step": the model advances on every sample (l2mu.agent.streaming); "window": `forward` on each
    # whole window. Both give the same decisions; step spreads the work evenly over the samples.
    inference: str = DEFAULTS.inference
    notifier: Notifier | None = None  # systemd's notify socket: WATCHDOG=1 while every watch makes progress
    stall_after_s: float | None = None  # a watch silent this long counts as stalled (default: the watchdog interval)
    states: WatchStateBoard | None = None  # each watch's <prefix>/watch/<watch>/state (l2mu.agent.watch_state)
    sessions: list[WatchSession] = field(default_factory=list)
    failures: dict[str, BaseException] = field(default_factory=dict)  # watch id → why it stopped
    stop_requested: bool = False
    _classifiers: dict[str, ExecuTorchClassifier] = field(default_factory=dict)
    _pools: dict[int, ChainPool] = field(default_factory=dict)  # id(classifier) → the chains of all its watches
    _deferred: bool = False  # inside run(): samples queue up and one tick per loop iteration steps them all
    _tick_scheduled: bool = False

    def __post_init__(self) -> None:
        meta = self.classifier.meta
        for src in self.sources:
            missing = set(meta.sensors) - src.sensors
            if missing and src.sensors_known:  # a live watch tells once connected
                raise SourceError(
                    f"{src.watch_id}: model {meta.name} needs {', '.join(sorted(missing))}, which this source lacks"
                )
            aligner, windower, smoother = self._pipeline(self.classifier)
            self.sessions.append(WatchSession(src, aligner, windower, smoother))

    def _pipeline(self, clf: ExecuTorchClassifier) -> tuple[StreamAligner, Windower | StepWindower, Smoother]:
        meta = clf.meta
        hop = max(1, round(self.decision_period_s * meta.sample_rate_hz))
        windower = (StepWindower(clf, meta.window_samples, hop, self._pool(clf)) if self.inference == "step"
                    else Windower(meta.window_samples, hop))
        return (StreamAligner(meta.sensors, meta.sample_rate_hz), windower,
                make_smoother(self.smoothing, len(meta.classes), self.smoothing_window))

    def _pool(self, clf: ExecuTorchClassifier) -> ChainPool | None:
        if not hasattr(clf, "part_sizes"):
            return None  # a stand-in without a program (tests of the main loop); StepWindower makes its own
        return self._pools.setdefault(id(clf), ChainPool(clf))

    def adopt_sensors(self, session: WatchSession, event: WatchConnected) -> None:
        """A live watch connected: feed it a model it has the sensors for (SourceError if there is none)."""
        from l2mu.agent.model_choice import model_for_sensors

        self.tick()  # what the old pipeline holds is decided with the old model

        current = session.classifier or self.classifier
        path = model_for_sensors(self.classifier.meta, self.classifier.path, event.sensors, session.source.watch_id)
        if path == self.classifier.path:
            chosen = self.classifier
        else:
            if str(path) not in self._classifiers:
                self._classifiers[str(path)] = ExecuTorchClassifier(path)
            chosen = self._classifiers[str(path)]
        if chosen is not current:
            log.info("%s streams %s: using model %s", session.source.watch_id, "+".join(event.sensors),
                     chosen.meta.name)
            session.classifier = chosen
            session.aligner, session.windower, session.smoother = self._pipeline(chosen)

    def handle_sample(self, session: WatchSession, sample: Sample) -> list[dict]:
        """Feed one raw sample through the pipeline. Outside `run` the model runs at once and the decisions
        it completed are returned; inside, the sample waits for this loop iteration's tick (`tick`), which
        steps every watch's due chains together, and [] is returned."""
        if session.wall0 is None:
            session.wall0, session.t0 = time.time(), sample.t
        if sample.label:
            session.recent_labels.append((sample.t, sample.label))
        grid, gap = session.aligner.push(sample.sensor, sample.t, sample.xyz)
        if gap:
            session.pending.append(None)  # a window never spans a gap
        if grid:
            arrival = getattr(session.source, "arrival", None)
            session.pending.extend((g, arrival) for g in grid)
        if not session.pending:
            return []
        if not self._deferred:
            return self.tick()
        if not self._tick_scheduled:
            self._tick_scheduled = True
            asyncio.get_running_loop().call_soon(self.tick)
        return []

    def tick(self) -> list[dict]:
        """Run the model on everything pending: round by round, each watch's next grid sample; in each
        round every due chain of every step-path watch advances in one `step` call per model."""
        self._tick_scheduled = False
        payloads: list[dict] = []
        waiting = [s for s in self.sessions if s.pending]
        while waiting:
            steps: dict[int, list] = {}  # id(pool) → [(session, grid sample, arrival, rows)]
            for session in waiting:
                item = self._next_grid_sample(session)
                if item is None:
                    continue
                g, arrival = item
                windower = session.windower
                if isinstance(windower, StepWindower):
                    steps.setdefault(id(windower.pool), []).append((session, g, arrival, windower.begin(g)))
                else:
                    window = windower.push(g)
                    if window is not None:
                        payloads.append(self._decide(session, window, arrival))
            for group in steps.values():
                payloads.extend(self._step_group(group))
            waiting = [s for s in waiting if s.pending]
        return payloads

    @staticmethod
    def _next_grid_sample(session: WatchSession) -> tuple | None:
        while session.pending:
            item = session.pending.popleft()
            if item is not None:
                return item
            session.windower.reset()
        return None

    def _step_group(self, group: list) -> list[dict]:
        """One batched step for the due chains of watches sharing one model, then their decisions."""
        first: StepWindower = group[0][0].windower
        rows = [r for *_, chain_rows in group for r in chain_rows]
        counts = None
        if rows:
            values = np.stack([g.values for _, g, _, chain_rows in group if chain_rows])
            x = first.normalised(values)
            per_watch = [len(chain_rows) for *_, chain_rows in group if chain_rows]
            counts = first.pool.step(rows, np.repeat(x, per_watch, axis=0))
        payloads, at = [], 0
        for session, g, arrival, chain_rows in group:
            n = len(chain_rows)
            window = session.windower.end(g, counts[at : at + n] if n else counts)
            at += n
            if window is not None:
                payloads.append(self._decide(session, window, arrival))
        return payloads

    def _decide(self, session: WatchSession, window, arrival: float | None) -> dict:  # noqa: ANN001
        clf = session.classifier or self.classifier
        meta = clf.meta
        if window.counts is not None:  # the step path ran the model as the samples came
            decision = decision_from_counts(window.counts)
        else:
            decision = clf.decide(normalise(window.values, meta.norm_mean, meta.norm_std))
        session.arrival = arrival
        smoothed = session.smoother.update(decision.probabilities)
        payload = build_payload(session, clf, window, decision, smoothed)
        truth = self._truth(session, window.t_start, window.t_end)
        if truth:
            session.labelled += 1
            session.correct += truth == payload["activity"]
        if self.on_decision:
            self.on_decision(payload, truth)
        self.publisher.publish_decision(session.source.watch_id, payload)
        if self.raw_scores:
            self.publisher.publish_scores(session.source.watch_id, build_scores_payload(payload, decision))
        session.seq += 1
        return payload

    @staticmethod
    def _truth(session: WatchSession, t0: float, t1: float) -> str:
        labels = Counter(label for t, label in session.recent_labels if t0 <= t <= t1)
        return labels.most_common(1)[0][0] if labels else ""

    async def _run_watch(self, session: WatchSession) -> None:
        session.last_progress = time.monotonic()
        try:
            # aclosing: a watch stopped by an error hangs up now, not whenever its generator is collected
            async with contextlib.aclosing(session.source.stream()) as stream:
                async for sample in stream:
                    session.last_progress = time.monotonic()
                    if self.states is not None:
                        self.states.saw(session.source.watch_id, sample)
                    if isinstance(sample, WatchConnected):  # a live watch (re)connected and said what it streams
                        self.adopt_sensors(session, sample)
                        continue
                    if isinstance(sample, StreamGap):  # a notification source lost samples here (link, sequence, shed)
                        session.aligner.mark_gap(sample.sensor)
                        continue
                    self.handle_sample(session, sample)
                    if session.source.speed == 0:
                        await asyncio.sleep(0)  # unpaced replay must still let signals and other watches in
        finally:
            session.last_progress = None  # an ended source is not a stalled one
            self.tick()  # what it delivered before it ended is still decided

    def healthy(self, now: float | None = None) -> bool:
        """True while every watch still streaming delivered a sample within the stall limit."""
        limit = self.stall_after_s
        if limit is None:
            limit = self.notifier.watchdog_s if self.notifier and self.notifier.watchdog_s else None
        if limit is None:
            return True
        now = time.monotonic() if now is None else now
        # A live watch (re)connecting on its own retry budget is not stalled (its budget ends it otherwise).
        return all(s.last_progress is None or s.source.connecting
                   or now - s.last_progress < limit for s in self.sessions)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._deferred = True
        tasks = [asyncio.create_task(self._run_watch(s), name=s.source.watch_id) for s in self.sessions]
        board = None
        if self.states is not None:
            for s in self.sessions:
                self.states.track(s.source)
            board = asyncio.create_task(self.states.run())
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.create_task(stop.wait())
        watchdog = asyncio.create_task(watchdog_pings(self.notifier, self.healthy)) if self.notifier else None
        try:
            pending = set(tasks)
            while pending and not stop.is_set():
                done, pending = await asyncio.wait(pending | {waiter}, return_when=asyncio.FIRST_COMPLETED)
                pending.discard(waiter)
                for task in done - {waiter}:
                    if task.exception():
                        log.error("watch %s stopped: %s", task.get_name(), task.exception())
                        self.failures[task.get_name()] = task.exception()
                    if self.states is not None:
                        self.states.ended(task.get_name(), task.exception())
            self.stop_requested = stop.is_set()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            waiter.cancel()
            if board is not None:
                board.cancel()
                await asyncio.gather(board, return_exceptions=True)
            if watchdog:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self._deferred = False
            self.tick()
