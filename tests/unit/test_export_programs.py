"""The exported methods before lowering: a window in chunks is the step applied sample by sample."""

from __future__ import annotations

import pytest
import torch

from l2mu.agent.runtime import counts_by_chunks
from l2mu.export.programs import CHUNK_NETWORK_STEPS, StepCore, build_methods, chunk_samples
from l2mu.model.l2mu import L2MU, L2MUConfig


@pytest.mark.parametrize(("substeps", "expected"), [(1, 40), (3, 10), (7, 5), (41, 1)])
def test_a_chunk_is_the_largest_whole_part_of_the_window_within_the_step_budget(substeps: int, expected: int) -> None:
    net = L2MU(L2MUConfig(substeps=substeps, theta=40.0 * substeps))
    chunk = chunk_samples(net, 40)
    assert chunk == expected and 40 % chunk == 0
    assert chunk * substeps <= CHUNK_NETWORK_STEPS or chunk == 1


@pytest.mark.parametrize(("substeps", "input_taps"), [(1, 1), (3, 2)])
def test_window_through_chunks_equals_the_step_sample_by_sample(substeps: int, input_taps: int) -> None:
    torch.manual_seed(4)
    net = L2MU(L2MUConfig(input_hidden=24, hidden=24, memory_size=4, order=6, substeps=substeps,
                          theta=40.0 * substeps, input_taps=input_taps)).eval()
    methods = build_methods(StepCore(net))
    window = torch.randn(40, 6) * 1.5
    zero = [torch.zeros(1, n) for n in (net.cfg.n_classes, *(s[1] for s in net.state_shapes(1)))]
    with torch.no_grad():
        chunked = counts_by_chunks(lambda inputs: methods["chunk"](*inputs), window, chunk_samples(net, 40), zero)
        state = zero
        for t in range(40):
            state = methods["step"](window[t : t + 1], *state)
        eager = net(window[None])[0]
    assert chunked.sum() > 0
    torch.testing.assert_close(chunked, state[0][0], rtol=0, atol=0)
    torch.testing.assert_close(chunked, eager)
    with pytest.raises(ValueError, match="whole number"):
        counts_by_chunks(lambda inputs: methods["chunk"](*inputs), window[:37], chunk_samples(net, 40), zero)
