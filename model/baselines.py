"""Non-spiking baselines trained and scored in exactly the L2MU's pipeline: an LMU and a GRU.

Both read the same normalised windows [B, T, C] and return class scores [B, K], so train.py,
evaluate.py and the checkpoint format treat them like the L2MU. They answer the question the
paper leaves open on this split: what do spikes cost (or buy) against real-valued recurrences?

    LMU (Voelker et al. 2019), sharing LegendreMemory with the L2MU:
        u_t = e_x x_t + e_h h_{t-1} + e_m m_{t-1}
        m_t = Ā m_{t-1} + B̄ u_t
        h_t = tanh(W_x x_t + W_h h_{t-1} + W_m m_t)
        scores = W_o h_T
    GRU: torch.nn.GRU over the window, scores = W_o h_T.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from l2mu.model.l2mu import LegendreMemory

BASELINE_ARCHS = ("lmu", "gru")


@dataclass
class BaselineConfig:
    arch: str = "lmu"
    n_channels: int = 6
    n_classes: int = 7
    memory_size: int = 8
    order: int = 8
    theta: float = 40.0
    hidden: int = 64
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class LMUClassifier(nn.Module):
    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, d, q, h = cfg.n_channels, cfg.memory_size, cfg.order, cfg.hidden
        self.e_x = nn.Linear(c, d)
        self.e_h = nn.Linear(h, d, bias=False)
        self.e_m = nn.Linear(d * q, d, bias=False)
        self.memory = LegendreMemory(q, cfg.theta)
        self.w_x = nn.Linear(c, h)
        self.w_h = nn.Linear(h, h, bias=False)
        self.w_m = nn.Linear(d * q, h, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.readout = nn.Linear(h, cfg.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        b, steps, _ = x.shape
        d, q = self.cfg.memory_size, self.cfg.order
        h = x.new_zeros(b, self.cfg.hidden)
        m = x.new_zeros(b, d * q)
        for t in range(steps):
            u = self.e_x(x[:, t]) + self.e_h(h) + self.e_m(m)
            m = self.memory(m.reshape(b, d, q), u).reshape(b, d * q)
            h = torch.tanh(self.w_x(x[:, t]) + self.w_h(h) + self.w_m(m))
        return self.readout(self.drop(h))

    def macs_per_window(self, steps: int) -> int:
        c, d, q, h = self.cfg.n_channels, self.cfg.memory_size, self.cfg.order, self.cfg.hidden
        per_step = c * d + h * d + d * q * d + d * q * q + d * q + c * h + h * h + d * q * h
        return steps * per_step + h * self.cfg.n_classes


class GRUClassifier(nn.Module):
    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gru = nn.GRU(cfg.n_channels, cfg.hidden, batch_first=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.readout = nn.Linear(cfg.hidden, cfg.n_classes)

    def forward(self, x: Tensor) -> Tensor:
        _, h_last = self.gru(x)
        return self.readout(self.drop(h_last[0]))

    def macs_per_window(self, steps: int) -> int:
        c, h = self.cfg.n_channels, self.cfg.hidden
        return steps * 3 * (c * h + h * h) + h * self.cfg.n_classes


def build_baseline(cfg: BaselineConfig) -> nn.Module:
    if cfg.arch == "lmu":
        return LMUClassifier(cfg)
    if cfg.arch == "gru":
        return GRUClassifier(cfg)
    raise ValueError(f"unknown baseline {cfg.arch!r} (expected one of {', '.join(BASELINE_ARCHS)})")
