"""Training perturbations: the slower-watch simulation is what a slow watch through the agent's
resampler delivers; time warp and rotation keep what must be kept."""

from __future__ import annotations

import numpy as np
import torch

from l2mu.model.augment import augment, read_at, slower_watch, time_warp


def _sine(freq_hz: float, n: int = 60) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float32) / 20
    return torch.stack([torch.sin(2 * np.pi * freq_hz * t + k) for k in range(3)], -1)[None]


def test_read_at_matches_numpy_interp() -> None:
    x = torch.randn(1, 10, 1)
    pos = torch.tensor([[-1.0, 0.0, 0.5, 3.25, 8.9, 9.0, 12.0]])
    want = np.interp(pos[0].numpy(), np.arange(10), x[0, :, 0].numpy())
    np.testing.assert_allclose(read_at(x, pos)[0, :, 0].numpy(), want, rtol=1e-6, atol=1e-6)


def test_slower_watch_keeps_slow_motion_and_removes_what_the_watch_cannot_see() -> None:
    x = _sine(1.0)
    assert torch.equal(slower_watch(x, 20.0), x)
    for rate in (10.0, 12.5):
        inner = slower_watch(x, rate)[0, 10:-10]
        assert (inner - x[0, 10:-10]).abs().max() < 0.12, rate
    fast = _sine(7.0)  # above a 10 Hz watch's Nyquist frequency
    assert slower_watch(fast, 10.0)[0, 10:-10].abs().max() < 0.15
    assert slower_watch(fast, 20.0)[0, 10:-10].abs().max() > 0.9


def test_slower_watch_matches_sampling_then_linear_interpolation() -> None:
    # Motion slow enough for the band limit to leave it alone: what remains is sampling at 12.5 Hz
    # (first sample 0.3 grid steps in) and np.interp back onto the 20 Hz grid, as the agent does.
    x = _sine(0.4, 80)
    got = slower_watch(x, 12.5, 0.3)[0, :, 0].numpy()
    t_slow = 0.3 + 1.6 * np.arange(60)
    slow = np.interp(t_slow, np.arange(80), x[0, :, 0].numpy())
    want = np.interp(np.arange(80), t_slow, slow)
    np.testing.assert_allclose(got[8:-8], want[8:-8], atol=0.02)


def test_time_warp_and_rotation_keep_shape_and_norms() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 40, 6)
    assert torch.equal(time_warp(x, gen, 0.0), x)
    warped = time_warp(x, gen, 0.2)
    assert warped.shape == x.shape and not torch.equal(warped, x)
    rotated = augment(x, torch.Generator().manual_seed(1), 30.0)
    # One rotation and one gain per window: the ratio of acc to gyro norms is unchanged per sample.
    ratio_before = x[..., :3].norm(dim=-1) / x[..., 3:].norm(dim=-1)
    ratio_after = rotated[..., :3].norm(dim=-1) / rotated[..., 3:].norm(dim=-1)
    torch.testing.assert_close(ratio_after, ratio_before, rtol=1e-4, atol=1e-4)
