"""Smoothing of the published activity: majority vote, HMM forward filter, none."""

from __future__ import annotations

import numpy as np
import pytest

from l2mu.agent.errors import UsageError
from l2mu.agent.smoothing import HmmFilter, MajorityVote, NoSmoothing, make_smoother


def one_hot(i: int, n: int = 3, p: float = 0.9) -> np.ndarray:
    v = np.full(n, (1 - p) / (n - 1))
    v[i] = p
    return v


@pytest.mark.parametrize("smoother", [MajorityVote(5), HmmFilter(3, 5)], ids=["majority", "hmm"])
def test_smoother_ignores_a_flicker_and_follows_a_lasting_change(smoother) -> None:  # noqa: ANN001
    stream = [0] * 6 + [1] + [0] * 3 + [2] * 6
    out = [smoother.update(one_hot(i)) for i in stream]
    assert out[:10] == [0] * 10  # the single window of class 1 is not published
    assert out[-1] == 2 and out.count(2) >= 2  # the lasting change is, a few windows late
    assert sum(a != b for a, b in zip(out, out[1:], strict=False)) == 1


def test_majority_needs_a_strict_majority_of_the_window() -> None:
    m = MajorityVote(4)
    assert [m.update(one_hot(i)) for i in (0, 1, 1, 2, 1)] == [0, 0, 0, 0, 1]  # 2 of 4 is not enough; 3 is


def test_no_smoothing_and_bad_kinds() -> None:
    assert NoSmoothing().update(one_hot(2)) == 2
    with pytest.raises(UsageError, match="--smoothing"):
        make_smoother("kalman", 3)
    with pytest.raises(UsageError):
        make_smoother("majority", 3, 0)
