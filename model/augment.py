"""Training-time perturbations of raw windows [B, T, 3·sensors] in SI units, on the 20 Hz grid.

Each one stands for a way a new wearer or a new watch differs from the training set: the watch
sits at another angle (rotation), the wearer moves with more or less vigour (gain) or faster or
slower (time warp), the watch samples more slowly than 20 Hz and the agent interpolates it back
(slower watch; the same band limit and linear read-out as `l2mu.agent.resample` for rates at or
below the grid rate)."""

from __future__ import annotations

import numpy as np
import torch

GRID_HZ = 20.0


def random_rotations(n: int, max_deg: float, gen: torch.Generator) -> torch.Tensor:
    """n rotation matrices about random axes by angles uniform in ±max_deg (Rodrigues)."""
    axis = torch.randn(n, 3, generator=gen)
    axis = axis / axis.norm(dim=1, keepdim=True)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * np.deg2rad(max_deg)
    k = torch.zeros(n, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return torch.eye(3) + s * k + (1 - c) * (k @ k)


def augment(xb: torch.Tensor, gen: torch.Generator, rotate_deg: float) -> torch.Tensor:
    """Rotate all of a window's sensors by one random rotation (acc and gyro live in the same
    watch frame), then apply a random per-window gain."""
    b, _, c = xb.shape
    rot = random_rotations(b, rotate_deg, gen)
    parts = [xb[..., i : i + 3] @ rot.transpose(1, 2) for i in range(0, c, 3)]
    gain = 1 + 0.1 * torch.randn(b, 1, 1, generator=gen)
    return torch.cat(parts, dim=-1) * gain


def read_at(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of x [B, T, C] at fractional sample positions pos [B, M] (held
    constant beyond the ends, as np.interp does) → [B, M, C]."""
    t = x.shape[1]
    pos = pos.clamp(0, t - 1)
    lo = pos.floor().long().clamp(max=t - 2) if t > 1 else pos.floor().long()
    frac = (pos - lo).unsqueeze(-1)
    hi = (lo + 1).clamp(max=t - 1)
    take = lambda idx: torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # noqa: E731
    return take(lo) * (1 - frac) + take(hi) * frac


def time_warp(xb: torch.Tensor, gen: torch.Generator, max_stretch: float) -> torch.Tensor:
    """Play each window faster or slower by a factor uniform in 1 ± max_stretch about its centre."""
    b, t, _ = xb.shape
    speed = 1 + (torch.rand(b, 1, generator=gen) * 2 - 1) * max_stretch
    centre = (t - 1) / 2
    return read_at(xb, centre + (torch.arange(t, dtype=xb.dtype) - centre) * speed)


def lowpass_kernel(cutoff_hz: float, rate_hz: float = GRID_HZ, half_width: int = 6) -> torch.Tensor:
    """Hamming-windowed sinc FIR, unit DC gain."""
    n = torch.arange(-half_width, half_width + 1, dtype=torch.float64)
    fc = cutoff_hz / rate_hz
    h = 2 * fc * torch.sinc(2 * fc * n) * torch.hamming_window(len(n), periodic=False, dtype=torch.float64)
    return (h / h.sum()).float()


def slower_watch(xb: torch.Tensor, rate_hz: float, phase: torch.Tensor | float = 0.0) -> torch.Tensor:
    """What the model sees when a watch sampling at rate_hz (≤ 20) streams this motion: band-limited
    to the watch's Nyquist frequency, sampled at rate_hz (first sample `phase` grid steps in),
    then read back onto the 20 Hz grid by linear interpolation, as the agent's resampler does."""
    b, t, c = xb.shape
    if rate_hz >= GRID_HZ:
        return xb
    kernel = lowpass_kernel(rate_hz / 2).to(xb.dtype)
    pad = len(kernel) // 2
    flat = xb.transpose(1, 2).reshape(b * c, 1, t)
    flat = torch.nn.functional.pad(flat, (pad, pad), mode="replicate")
    smooth = torch.nn.functional.conv1d(flat, kernel.view(1, 1, -1)).reshape(b, c, t).transpose(1, 2)
    step = GRID_HZ / rate_hz
    phase_t = torch.as_tensor(phase, dtype=xb.dtype).reshape(-1, 1).expand(b, 1)
    n_slow = int(np.ceil(t / step)) + 1
    slow_pos = phase_t + step * torch.arange(n_slow, dtype=xb.dtype)
    slow = read_at(smooth, slow_pos)
    # Grid sample n lies between slow samples k and k+1 with k = floor((n − phase) / step).
    k = (torch.arange(t, dtype=xb.dtype) - phase_t) / step
    return read_at(slow, k)


def random_slower_watch(xb: torch.Tensor, gen: torch.Generator, low_hz: float) -> torch.Tensor:
    """`slower_watch` at one rate uniform in [low_hz, 20) for the batch, random phase per window."""
    rate = float(low_hz + torch.rand(1, generator=gen) * (GRID_HZ - low_hz))
    phase = torch.rand(xb.shape[0], generator=gen) * (GRID_HZ / rate)
    return slower_watch(xb, rate, phase)
