"""Decision smoothing: turn a stream of per-window class probabilities into a stable activity.

A single 2 s window is often ambiguous at the edges of an activity or during a pause, so the
raw argmax flickers. Subscribers (dashboards, automations) want a state that changes only when
the evidence does, so each decision's published `activity` comes from one of these smoothers
while `raw_activity` keeps the window's own argmax.

- `majority`: the activity changes only when another class holds a strict majority of the last
  N windows' argmaxes (hysteresis: a tie or a plurality keeps the current activity).
- `hmm`: forward filter of a sticky hidden Markov chain whose state is the activity; the window
  probabilities act as emission likelihoods. The published activity is the filtered argmax.
- `none`: the raw argmax.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Protocol

import numpy as np

from l2mu.agent.errors import UsageError
from l2mu.agent.settings import DEFAULTS, SMOOTHING_KINDS


class Smoother(Protocol):
    def update(self, probabilities: np.ndarray) -> int:
        """Take one window's class probabilities; return the smoothed class index."""
        ...


class NoSmoothing:
    def update(self, probabilities: np.ndarray) -> int:
        return int(np.argmax(probabilities))


class MajorityVote:
    def __init__(self, window: int) -> None:
        if window < 1:
            raise UsageError(f"smoothing window must be ≥ 1, got {window}")
        self.votes: deque[int] = deque(maxlen=window)
        self.current: int | None = None

    def update(self, probabilities: np.ndarray) -> int:
        raw = int(np.argmax(probabilities))
        self.votes.append(raw)
        if self.current is None:
            self.current = raw  # nothing to hold on to yet: the first window decides
            return raw
        leader, count = Counter(self.votes).most_common(1)[0]
        # Against the full window size, not the votes so far: early on a switch needs the same evidence.
        if leader != self.current and count > self.votes.maxlen // 2:
            self.current = leader
        return self.current


class HmmFilter:
    """Forward algorithm with a transition matrix that stays put with probability 1 − switch."""

    def __init__(self, n_classes: int, window: int, floor: float = 1e-3) -> None:
        if window < 1:
            raise UsageError(f"smoothing window must be ≥ 1, got {window}")
        self.n = n_classes
        # An activity is expected to last several windows: the same N that sizes the majority vote
        # sets the expected dwell, so `--smoothing-window` means "how much evidence" for both.
        self.switch = 1.0 / (2.0 * window + 1.0) if window > 1 else 1.0 - 1.0 / n_classes
        # A floor keeps one overconfident window from zeroing a class the filter may need to return to.
        self.floor = floor
        self.belief: np.ndarray | None = None

    def update(self, probabilities: np.ndarray) -> int:
        p = np.maximum(np.asarray(probabilities, dtype=np.float64), self.floor)
        if self.belief is None:
            prior = np.full(self.n, 1.0 / self.n)
        else:
            prior = (1.0 - self.switch) * self.belief + self.switch * (1.0 - self.belief) / (self.n - 1)
        post = prior * p
        self.belief = post / post.sum()
        return int(np.argmax(self.belief))


def make_smoother(kind: str, n_classes: int, window: int = DEFAULTS.smoothing_window) -> Smoother:
    if kind == "majority":
        return MajorityVote(window)
    if kind == "hmm":
        return HmmFilter(n_classes, window)
    if kind == "none":
        return NoSmoothing()
    raise UsageError(f"--smoothing must be one of {', '.join(SMOOTHING_KINDS)}, got {kind!r}")
