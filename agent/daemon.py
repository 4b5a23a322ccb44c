"""The agent's main loop: every watch's samples → pipeline → model → decision → MQTT.

Hot model swap (SIGHUP, `systemctl reload`): the agent loads the program `--model` names again (the
file may have been replaced in place) and checks it against every watch's sensors before anything
changes; a program that fails to load leaves the running one in place, with one ERROR line. On
success every watch switches at once, between two grid samples:

- Same grid (sensors, sample rate and window length as the old program): the windows in flight
  finish on the old model (its chains keep stepping until they complete; on the window path the
  windows that began before the swap are decided by it), and the new model takes every window that
  begins after the swap, at the same spacing. No window is dropped and none is late: decisions keep
  coming one per period, the first from the new model one window plus at most one period after the swap.
- Another grid: the state layouts differ, so the windows restart cleanly as after a gap (those in
  flight are dropped, the new model's first decision comes one window after the swap).

`seq` continues across a swap; `model` and `model_id` say which program made each decision.
"""

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

from l2mu.agent.errors import SourceError
from l2mu.agent.events import Sample, StreamGap, WatchConnected
from l2mu.agent.pipeline import StreamAligner, Windower, normalise
from l2mu.agent.runtime import ExecuTorchClassifier, decision_from_counts
from l2mu.agent.sdnotify import Notifier, watchdog_pings
from l2mu.agent.settings import DEFAULTS
from l2mu.agent.smoothing import Smoother, make_smoother
from l2mu.agent.sources import Source
from l2mu.agent.streaming import ChainPool, StepWindower
from l2mu.agent.watch_state import WatchStateBoard
from l2mu.model.metadata import ModelFileError

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
class Retiring:
    """The model a watch fed before a swap, finishing the windows that began before it (at or before `cutoff`,
    a grid time). `windower`: its own StepWindower on the step path; None on the window path, whose one
    Windower holds the samples and whose windows go to this model by their start time."""

    classifier: ExecuTorchClassifier
    smoother: Smoother
    cutoff: float
    windower: StepWindower | None = None


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
    # What the watch said it streams when it last connected (a live watch); None for a recording.
    live_sensors: tuple[str, ...] | None = None
    last_grid_t: float = float("-inf")  # the newest grid sample handed to the windower
    retiring: list[Retiring] = field(default_factory=list)  # models swapped out, windows still in flight

    def drop_retiring(self) -> None:
        for r in self.retiring:
            if r.windower is not None:
                r.windower.reset()  # gives its chains' rows back to the old pool
        self.retiring.clear()

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
        "model_id": clf.model_id,
        "seq": session.seq,
    }


def build_scores_payload(payload: dict, decision) -> dict:  # noqa: ANN001
    """The per-window evidence for <prefix>/scores/<watch>: raw spike counts besides the probabilities."""
    keys = ("watch", "seq", "window_start", "window_end", "model", "model_id", "raw_activity", "scores")
    return {**{k: payload[k] for k in keys}, "counts": [round(float(c), 4) for c in decision.counts]}


def running_status(watches: int, clf: ExecuTorchClassifier) -> str:
    """systemd's STATUS= for a serving agent: how many watches, and which program (name and id)."""
    return f"running: {watches} watch(es), model {clf.meta.name} {clf.model_id}"


def check_sensors(src: Source, clf: ExecuTorchClassifier) -> None:
    """SourceError if `src` is known to lack a sensor the program needs (a live watch tells once connected)."""
    missing = set(clf.meta.sensors) - src.sensors
    if missing and src.sensors_known:
        raise SourceError(f"{src.watch_id}: model {clf.meta.name} needs {', '.join(sorted(missing))}, "
                          "which this source lacks")


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
    # "step": the model advances on every sample (l2mu.agent.streaming); "window": the `chunk` method over each
    # whole window. Both give the same decisions; step spreads the work evenly over the samples.
    inference: str = DEFAULTS.inference
    notifier: Notifier | None = None  # systemd's notify socket: WATCHDOG=1 while every watch makes progress
    stall_after_s: float | None = None  # a watch silent this long counts as stalled (default: the watchdog interval)
    # How SIGHUP loads the program again (compose: the `--model` name or path, resolved afresh); default: the
    # running program's file.
    loader: Callable[[], ExecuTorchClassifier] | None = None
    on_swap: Callable[[ExecuTorchClassifier], None] | None = None  # after a successful swap (discovery configs)
    # Tells systemd the agent serves again after a reload, `note` first (compose: READY=1 with its own status
    # line, the broker's state included); default: READY=1 naming the watches and the model.
    ready_again: Callable[[str], None] | None = None
    swaps: int = 0
    failed_swaps: int = 0
    reload_requested: bool = False  # a SIGHUP arrived before `run` took the signal over: reload once it runs
    states: WatchStateBoard | None = None  # each watch's <prefix>/watch/<watch>/state (l2mu.agent.watch_state)
    sessions: list[WatchSession] = field(default_factory=list)
    failures: dict[str, BaseException] = field(default_factory=dict)  # watch id → why it stopped
    stop_requested: bool = False
    _classifiers: dict[str, ExecuTorchClassifier] = field(default_factory=dict)
    _pools: dict[int, ChainPool] = field(default_factory=dict)  # id(classifier) → the chains of all its watches
    _deferred: bool = False  # inside run(): samples queue up and one tick per loop iteration steps them all
    _tick_scheduled: bool = False

    def __post_init__(self) -> None:
        for src in self.sources:
            check_sensors(src, self.classifier)
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

        session.live_sensors = tuple(event.sensors)
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
            session.drop_retiring()
            session.aligner, session.windower, session.smoother = self._pipeline(chosen)

    # --- hot model swap ---------------------------------------------------------------------------

    def reload_model(self) -> bool:
        """Load the program again and switch every watch to it (module docstring). False, with one ERROR line
        and the old program still running, if it cannot be loaded or does not fit a watch's sensors."""
        old = self.classifier
        began = time.monotonic()
        if self.notifier:
            self.notifier.reloading(f"reloading model (running {old.meta.name} {old.model_id})")
        try:
            new = self.loader() if self.loader else ExecuTorchClassifier(old.path)
            chosen = self._models_for_watches(new)
        except (ModelFileError, SourceError, OSError) as exc:
            self.failed_swaps += 1
            log.error("model reload failed, still running %s (%s): %s", old.meta.name, old.model_id,
                      " ".join(str(exc).split()))
            self._ready_again("reload failed; ")
            return False
        loaded_ms = (time.monotonic() - began) * 1000
        self.tick()  # grid samples already waiting are the old model's
        restarted = [s.source.watch_id for s in self.sessions if not self._swap(s, chosen[id(s)], new)]
        self.classifier = new
        self._classifiers = {str(c.path): c for c in chosen.values() if c is not new}
        self._prune_pools()
        self.swaps += 1
        log.info("model reloaded in %.0f ms: %s (%s) → %s (%s)%s", loaded_ms, old.meta.name, old.model_id,
                 new.meta.name, new.model_id,
                 f"; another grid, so the windows of {', '.join(restarted)} restart" if restarted
                 else "; windows in flight finish on the old one")
        if self.on_swap:
            self.on_swap(new)
        self._ready_again()
        return True

    def _ready_again(self, note: str = "") -> None:
        if self.ready_again:
            self.ready_again(note)
        elif self.notifier:
            self.notifier.ready(note + running_status(len(self.sessions), self.classifier))

    def _models_for_watches(self, new: ExecuTorchClassifier) -> dict[int, ExecuTorchClassifier]:
        """id(session) → the program it will feed: `new`, or for a live watch without a sensor `new` needs, the
        program with the same classes it has the sensors for (model_choice), loaded afresh. Raises SourceError
        for a watch no program fits, the same rule as at start and on connect."""
        from l2mu.agent.model_choice import model_for_sensors

        loaded = {str(new.path): new}
        out: dict[int, ExecuTorchClassifier] = {}
        for session in self.sessions:
            src = session.source
            if session.live_sensors is None:
                check_sensors(src, new)
                out[id(session)] = new
                continue
            path = model_for_sensors(new.meta, new.path, session.live_sensors, src.watch_id)
            if str(path) not in loaded:
                loaded[str(path)] = ExecuTorchClassifier(path)
            out[id(session)] = loaded[str(path)]
        return out

    def _swap(self, session: WatchSession, clf: ExecuTorchClassifier, new: ExecuTorchClassifier) -> bool:
        """Switch one watch to `clf` (`new`, the agent's new program, or its stand-in for this watch's sensors);
        False when the grid differs and the watch's windows restart."""
        current = session.classifier or self.classifier
        session.classifier = None if clf is new else clf
        a, b = current.meta, clf.meta
        if (a.sensors, a.sample_rate_hz, a.window_samples) != (b.sensors, b.sample_rate_hz, b.window_samples):
            session.drop_retiring()
            session.windower.reset()
            session.aligner, session.windower, session.smoother = self._pipeline(clf)
            return False
        smoother = session.smoother if a.classes == b.classes else make_smoother(
            self.smoothing, len(b.classes), self.smoothing_window)
        retiring = Retiring(current, session.smoother, session.last_grid_t)
        if isinstance(session.windower, StepWindower):
            retiring.windower = session.windower
            session.windower = session.windower.successor(clf, self._pool(clf))
        session.retiring.append(retiring)
        session.smoother = smoother
        return True

    def _prune_pools(self) -> None:
        in_use = {id(s.classifier or self.classifier) for s in self.sessions}
        in_use |= {id(r.classifier) for s in self.sessions for r in s.retiring}
        self._pools = {k: v for k, v in self._pools.items() if k in in_use}

    def handle_sample(self, session: WatchSession, sample: Sample) -> list[dict]:
        """Feed one raw sample through the pipeline. Outside `run` the model runs at once and the decisions
        it completed are returned; inside, the sample waits for this loop iteration's tick (`tick`), which
        steps every watch's due chains together, and [] is returned."""
        if session.wall0 is None:
            session.wall0, session.t0 = time.time(), sample.t
        if sample.label:
            session.recent_labels.append((sample.t, sample.label))
        counters = session.aligner.counters
        episodes = counters.invalid_episodes
        grid, gap = session.aligner.push(sample.sensor, sample.t, sample.xyz)
        if counters.invalid_episodes != episodes:  # once per run of bad samples, not per sample
            log.warning("%s: dropped an invalid %s sample (t=%s, values %s): no watch can produce it; the windows "
                        "around it are dropped as at a gap (%d such samples so far)", session.source.watch_id,
                        sample.sensor, sample.t, ", ".join(f"{v:g}" for v in sample.xyz), counters.samples_invalid)
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
            steps: dict[int, list] = {}  # id(pool) → [(session, windower, retiring, grid sample, arrival, rows)]
            for session in waiting:
                item = self._next_grid_sample(session)
                if item is None:
                    continue
                g, arrival = item
                session.last_grid_t = g.t
                windower = session.windower
                if isinstance(windower, StepWindower):
                    # A retiring model's chains step beside the new one's until the windows in flight are done.
                    for r in session.retiring:
                        if r.windower is not None:
                            steps.setdefault(id(r.windower.pool), []).append(
                                (session, r.windower, r, g, arrival, r.windower.begin(g)))
                    steps.setdefault(id(windower.pool), []).append(
                        (session, windower, None, g, arrival, windower.begin(g)))
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
            session.drop_retiring()  # a gap drops the old model's windows in flight too
        return None

    def _step_group(self, group: list) -> list[dict]:
        """One batched step for the due chains of watches sharing one model, then their decisions."""
        first: StepWindower = group[0][1]
        rows = [r for *_, chain_rows in group for r in chain_rows]
        counts = None
        if rows:
            values = np.stack([g.values for _, _, _, g, _, chain_rows in group if chain_rows])
            x = first.normalised(values)
            per_watch = [len(chain_rows) for *_, chain_rows in group if chain_rows]
            counts = first.pool.step(rows, np.repeat(x, per_watch, axis=0))
        payloads, at = [], 0
        for session, windower, retiring, g, arrival, chain_rows in group:
            n = len(chain_rows)
            window = windower.end(g, counts[at : at + n] if n else counts)
            at += n
            if window is not None:
                payloads.append(self._decide(session, window, arrival, retiring))
            if retiring is not None and not windower.in_flight:
                session.retiring.remove(retiring)  # the old model's last window is decided
                self._prune_pools()
        return payloads

    def _decide(self, session: WatchSession, window, arrival: float | None,  # noqa: ANN001
                retiring: Retiring | None = None) -> dict:
        if retiring is None and window.counts is None and session.retiring:
            # The window path: a window that began before the swap is the old model's to decide.
            retiring = next((r for r in session.retiring if window.t_start <= r.cutoff), None)
            session.retiring = [r for r in session.retiring if window.t_start <= r.cutoff]
        clf, smoother = ((retiring.classifier, retiring.smoother) if retiring is not None
                         else (session.classifier or self.classifier, session.smoother))
        meta = clf.meta
        if window.counts is not None:  # the step path ran the model as the samples came
            decision = decision_from_counts(window.counts)
        else:
            decision = clf.decide(normalise(window.values, meta.norm_mean, meta.norm_std))
        session.arrival = arrival
        smoothed = smoother.update(decision.probabilities)
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

    async def _reloads(self, requested: asyncio.Event) -> None:
        while True:
            await requested.wait()
            requested.clear()  # SIGHUPs arriving during a reload make one more, not one each
            self.reload_model()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._deferred = True
        tasks = [asyncio.create_task(self._run_watch(s), name=s.source.watch_id) for s in self.sessions]
        board = None
        if self.states is not None:
            for s in self.sessions:
                self.states.track(s.source)
            board = asyncio.create_task(self.states.run())
        stop, reload = asyncio.Event(), asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload.set)
        if self.reload_requested:
            reload.set()
        waiter = asyncio.create_task(stop.wait())
        # On the loop, between two ticks: no sample is half-handled when the models change. A bug in the swap
        # ends the reloader task with its exception, which stops the agent like any crash.
        reloader = asyncio.create_task(self._reloads(reload))
        watchdog = asyncio.create_task(watchdog_pings(self.notifier, self.healthy)) if self.notifier else None
        try:
            pending = set(tasks)
            while pending and not stop.is_set():
                done, pending = await asyncio.wait(pending | {waiter, reloader},
                                                   return_when=asyncio.FIRST_COMPLETED)
                pending -= {waiter, reloader}
                if reloader in done:
                    reloader.result()
                for task in done - {waiter, reloader}:
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
            reloader.cancel()
            await asyncio.gather(reloader, return_exceptions=True)
            if board is not None:
                board.cancel()
                await asyncio.gather(board, return_exceptions=True)
            if watchdog:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self._deferred = False
            self.tick()
