"""The step path: the model advances on every grid sample, at O(1) cost, with window semantics kept exact.

The network is trained on windows that start from the zero state, so one never-reset state run
forever would be a different model. Instead, exactly where `Windower` puts them, windows of `length`
samples start every `hop` samples after a (re)start; each window in flight has its own chain of `step` states,
reset to zero at its own start. Every sample advances every chain once (ceil(length / hop) steps
per sample: 2 for the agent's 2 s windows every 1 s), and a chain that has taken `length` samples
holds exactly the counts `forward` gives for that window — the same operations in the same order
(tests/integration/test_streaming.py checks the agent's decisions on a real recording against the window path).

Normalisation is the window path's, sample by sample: the same float64 arithmetic cast to float32.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from l2mu.agent.pipeline import GridSample, Window, normalise
from l2mu.agent.runtime import ExecuTorchClassifier


@dataclass
class _Chain:
    state: torch.Tensor
    t_start: float
    counts: np.ndarray | None = None
    taken: int = 0


class StepWindower:
    """`Windower`'s twin for the step path: same `push`/`reset`, same windows, but each window it
    emits carries the model's counts (computed as samples arrived) instead of the samples."""

    def __init__(self, classifier: ExecuTorchClassifier, length: int, hop: int) -> None:
        if length < 1 or hop < 1:
            raise ValueError(f"window length and hop must be at least 1 (got {length}, {hop})")
        self.classifier = classifier
        self.length = length
        self.hop = hop
        meta = classifier.meta
        self._mean, self._std = meta.norm_mean, meta.norm_std
        self._chains: deque[_Chain] = deque()
        self._since_start = 0  # grid samples since the last (re)start

    def reset(self) -> None:
        """A gap: every window in flight is dropped; windows are placed afresh from the next sample on."""
        self._chains.clear()
        self._since_start = 0

    def push(self, sample: GridSample) -> Window | None:
        # Windower's windows end `max(length, hop)` samples after a (re)start and every `hop` after that.
        first_start = max(self.length, self.hop) - self.length
        n = self._since_start - first_start
        if n >= 0 and n % self.hop == 0:
            self._chains.append(_Chain(self.classifier.initial_state(), sample.t))
        self._since_start += 1
        x = normalise(np.asarray(sample.values)[None, :], self._mean, self._std)[0]
        for chain in self._chains:
            chain.counts, chain.state = self.classifier.step(x, chain.state)
            chain.taken += 1
        # Chains start `hop` ≥ 1 samples apart, so at most the oldest one completes per sample. With hop >
        # length there are samples no window covers, and no chain then.
        if not self._chains or self._chains[0].taken < self.length:
            return None
        done = self._chains.popleft()
        return Window(None, done.t_start, sample.t, counts=done.counts)
