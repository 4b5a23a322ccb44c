"""The step path: the model advances on every grid sample, at O(1) cost, with window semantics kept exact.

The network is trained on windows that start from the zero state, so one never-reset state run
forever would be a different model. Instead, exactly where `Windower` puts them, windows of `length`
samples start every `hop` samples after a (re)start; each window in flight has its own chain of `step` states,
reset to zero at its own start. Every sample advances every chain once (ceil(length / hop) steps
per sample: 2 for the agent's 2 s windows every 1 s), and a chain that has taken `length` samples
holds exactly the counts the window path (`chunk`) gives for that window — the same operations in the same order
(tests/integration/test_streaming.py checks the agent's decisions on a real recording against the window path).

Chains live in a `ChainPool`: one row of state per chain, for every watch that uses the model, so the
agent can advance all chains that are due — of all its watches — in one batched `step` call per tick
(`StepWindower.begin` / `end` around `ChainPool.step`; `push` does all three for one watch). A batch row
is computed exactly as a lone chain is, so batching changes no count (tests/integration/test_native_runner.py).

Normalisation is the window path's, sample by sample: the same float64 arithmetic cast to float32.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from l2mu.agent.pipeline import GridSample, Window, normalise
from l2mu.agent.runtime import ExecuTorchClassifier

POOL_ROWS = 64  # chains a pool holds before it grows (doubling): 32 watches' two windows in flight


class ChainPool:
    """The states of every chain in flight for one model: one row per chain in each state part."""

    def __init__(self, classifier: ExecuTorchClassifier, rows: int = POOL_ROWS) -> None:
        self.classifier = classifier
        self.parts = [np.zeros((rows, n), np.float32) for n in classifier.part_sizes]
        self._free = list(range(rows - 1, -1, -1))

    def acquire(self) -> int:
        """A row for a new chain, at the zero state."""
        if not self._free:
            rows = len(self.parts[0])
            self.parts = [np.concatenate([p, np.zeros_like(p)]) for p in self.parts]
            self._free = list(range(2 * rows - 1, rows - 1, -1))
        row = self._free.pop()
        for p in self.parts:
            p[row] = 0.0
        return row

    def release(self, row: int) -> None:
        self._free.append(row)

    def step(self, rows: Sequence[int], samples: np.ndarray) -> np.ndarray:
        """Advance chain rows[i] by normalised samples[i] ([B, C] float32), all in as few calls as the
        program's batch bound allows (one, up to it); returns the counts so far [B, K]."""
        clf = self.classifier
        out = []
        for i in range(0, len(rows), clf.batch_max):
            chunk = list(rows[i : i + clf.batch_max])
            out.append(clf.step_rows(np.ascontiguousarray(samples[i : i + clf.batch_max]), self.parts, chunk))
        return out[0] if len(out) == 1 else np.concatenate(out)


@dataclass
class _Chain:
    row: int
    t_start: float
    taken: int = 0


class StepWindower:
    """`Windower`'s twin for the step path: same `push`/`reset`, same windows, but each window it
    emits carries the model's counts (computed as samples arrived) instead of the samples."""

    def __init__(self, classifier: ExecuTorchClassifier, length: int, hop: int, pool: ChainPool | None = None) -> None:
        if length < 1 or hop < 1:
            raise ValueError(f"window length and hop must be at least 1 (got {length}, {hop})")
        self.classifier = classifier
        self.length = length
        self.hop = hop
        self._pool = pool
        meta = classifier.meta
        self._mean, self._std = meta.norm_mean, meta.norm_std
        self._chains: deque[_Chain] = deque()
        self._since_start = 0  # grid samples since the last (re)start
        self._retired = False  # finishing the windows in flight only (a model swap)

    @property
    def pool(self) -> ChainPool:
        if self._pool is None:  # made on first use: a watch that never streams holds no state
            self._pool = ChainPool(self.classifier)
        return self._pool

    def successor(self, classifier: ExecuTorchClassifier, pool: ChainPool | None = None) -> StepWindower:
        """A model swap: a windower for `classifier` (same window length) that places its first window where this
        one would have placed its next, so windows keep their spacing; this one retires, finishing only the
        windows already in flight, on its own model."""
        if classifier.meta.window_samples != self.length:
            raise ValueError(f"a successor needs {self.length}-sample windows, not {classifier.meta.window_samples}")
        nxt = StepWindower(classifier, self.length, self.hop, pool)
        nxt._since_start = self._since_start
        self._retired = True
        return nxt

    @property
    def in_flight(self) -> int:
        return len(self._chains)

    def reset(self) -> None:
        """A gap: every window in flight is dropped; windows are placed afresh from the next sample on."""
        for chain in self._chains:
            self.pool.release(chain.row)
        self._chains.clear()
        self._since_start = 0

    def normalised(self, values: np.ndarray) -> np.ndarray:
        """Grid values [N, C] → the model's input rows [N, C] float32."""
        return normalise(values, self._mean, self._std)

    def begin(self, sample: GridSample) -> list[int]:
        """Place a new chain if one starts at `sample`; returns the pool rows `sample` must advance."""
        # Windower's windows end `max(length, hop)` samples after a (re)start and every `hop` after that.
        first_start = max(self.length, self.hop) - self.length
        n = self._since_start - first_start
        if n >= 0 and n % self.hop == 0 and not self._retired:
            self._chains.append(_Chain(self.pool.acquire(), sample.t))
        self._since_start += 1
        return [chain.row for chain in self._chains]

    def end(self, sample: GridSample, counts: np.ndarray) -> Window | None:
        """After the step: `counts` [len(rows), K] for the rows `begin` gave, in order."""
        for chain in self._chains:
            chain.taken += 1
        # Chains start `hop` ≥ 1 samples apart, so at most the oldest one completes per sample. With hop >
        # length there are samples no window covers, and no chain then.
        if not self._chains or self._chains[0].taken < self.length:
            return None
        done = self._chains.popleft()
        self.pool.release(done.row)
        return Window(None, done.t_start, sample.t, counts=np.array(counts[0]))

    def push(self, sample: GridSample) -> Window | None:
        rows = self.begin(sample)
        if not rows:
            return self.end(sample, np.empty((0, 0), np.float32))
        x = self.normalised(np.asarray(sample.values)[None, :])
        counts = self.pool.step(rows, np.repeat(x, len(rows), axis=0))
        return self.end(sample, counts)
