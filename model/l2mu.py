"""L2MU: a Legendre Memory Unit whose every element is a population of spiking neurons.

Following Fra et al. (2024), "Natively neuromorphic LMU architecture for encoding-free
SNN-based HAR on commercial edge devices":

    input module   raw normalised x_t --(per-channel learned current injection)--> LIF
                   --> LIF --> LIF                                  = s^x_t  (spikes)
    u population   s^u_t = LIF(E_x s^x_t + E_h s^h_{t-1} + E_m s^m_{t-1})
    m populations  s^m_t = LIF(Ā s^m_{t-1} + B̄ s^u_t)        (memory_size × order neurons)
    h population   s^h_t = LIF(W_x s^x_t + W_h s^h_{t-1} + W_m s^m_t)
    output         s^o_t = LIF(W_o s^h_t);  readout = spike counts over the window

(Ā, B̄) is the LMU's Legendre (Padé) state-space system discretised by zero-order hold
over a sliding window of θ time steps (Voelker et al., 2019).

Every neuron population is an snnTorch ``Leaky`` (LIF) or ``Synaptic`` (current-based LIF)
with its own learnable decay(s) and threshold. Recurrent state is explicit, so ``step``
advances one sample at O(1) cost and ``forward`` is just ``step`` applied T times.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import snntorch as snn
import torch
from scipy.signal import cont2discrete
from snntorch import surrogate
from torch import Tensor, nn


@dataclass
class L2MUConfig:
    n_channels: int = 6
    n_classes: int = 7
    input_population: int = 8  # neurons per input channel in the encoding-free module
    input_hidden: int = 64  # width of the two further LIF layers of the input module
    memory_size: int = 8  # dimension of u (one Legendre memory per u neuron)
    order: int = 8  # Legendre polynomials per memory
    theta: float = 40.0  # memory window in time steps (40 = the 2 s window at 20 Hz)
    hidden: int = 64
    output_population: int = 4  # neurons per class; their counts are averaged
    neuron: str = "leaky"  # "leaky" (LIF) or "synaptic" (current-based LIF)
    beta: float = 0.9
    alpha: float = 0.8
    threshold: float = 1.0
    # B̄'s entries are ~(2i+1)/θ, far below 1: with the common threshold the memory population
    # would never fire and the LMU memory would be dead from the start.
    memory_threshold: float = 0.1
    dropout: float = 0.0  # on the input module's and h's spikes, training only
    # Network steps per sample: each sample is held for this many steps, so a rate code over the
    # window has that many times the levels (θ counts network steps: 40 × substeps spans 2 s).
    substeps: int = 1
    # 2: each input neuron also weighs the previous sample through a one-sample synaptic delay, so
    # it can answer a change of the value, not only its level (1: the paper's input module).
    input_taps: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def legendre_state_space(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-time (A, B) of the Legendre delay system over a window θ (Voelker et al. 2019)."""
    idx = np.arange(order)
    i, j = np.meshgrid(idx, idx, indexing="ij")
    sign = np.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    a = (2 * i + 1) * sign / theta
    b = ((2 * idx + 1) * (-1.0) ** idx / theta).reshape(order, 1)
    return a, b


def discretise_zoh(a: np.ndarray, b: np.ndarray, dt: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    order = a.shape[0]
    ad, bd, *_ = cont2discrete((a, b, np.eye(order), np.zeros((order, 1))), dt=dt, method="zoh")
    return ad, bd


class LegendreMemory(nn.Module):
    """Applies m_t = Ā m_{t-1} + B̄ u_t to a batch of memories laid out as rows [..., order]."""

    def __init__(self, order: int, theta: float) -> None:
        super().__init__()
        ad, bd = discretise_zoh(*legendre_state_space(order, theta))
        self.register_buffer("A_bar", torch.tensor(ad, dtype=torch.float32))
        self.register_buffer("B_bar", torch.tensor(bd[:, 0], dtype=torch.float32))

    def forward(self, m_prev: Tensor, u: Tensor) -> Tensor:
        # Rows hold memories, so Ā m (column form) is m @ Āᵀ here: exactly linear(m, Ā),
        # which export delegates like any other constant-weight layer.
        return nn.functional.linear(m_prev, self.A_bar) + u.unsqueeze(-1) * self.B_bar


SURROGATE_SLOPE = 25.0
DIFFERENTIATOR_MAX_LOG_GAIN = float(np.log(30.0))


def _population(cfg: L2MUConfig, threshold: float) -> nn.Module:
    grad = surrogate.fast_sigmoid(slope=SURROGATE_SLOPE)
    beta = torch.tensor(cfg.beta)
    thr = torch.tensor(threshold)
    if cfg.neuron == "leaky":
        return snn.Leaky(beta=beta, threshold=thr, learn_beta=True, learn_threshold=True, spike_grad=grad)
    if cfg.neuron == "synaptic":
        return snn.Synaptic(
            alpha=torch.tensor(cfg.alpha), beta=beta, threshold=thr,
            learn_alpha=True, learn_beta=True, learn_threshold=True, spike_grad=grad,
        )
    raise ValueError(f"unknown neuron type {cfg.neuron!r} (expected 'leaky' or 'synaptic')")


def _heaviside(x: Tensor) -> Tensor:
    """1 where x > 0 else 0, from ops XNNPACK runs natively (no comparison or cast), so a
    whole window lowers into one delegate: ceil(clamp(x, 0, 1)) is 1 for any x > 0."""
    return torch.ceil(nn.functional.hardtanh(x, 0.0, 1.0))


# Populations in the order their states appear in the flat state tuple.
POPULATIONS = ("inj", "in1", "in2", "u", "m", "h", "out")


class L2MU(nn.Module):
    def __init__(self, cfg: L2MUConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, p = cfg.n_channels, cfg.input_population
        d, q, h = cfg.memory_size, cfg.order, cfg.hidden
        # Encoding-free input module: each channel drives its own population with a learned
        # gain and bias per neuron, so the network itself decides how values become spikes.
        self.inj_gain = nn.Parameter(torch.randn(c, p) * 1.0)
        self.inj_bias = nn.Parameter(torch.rand(c, p) * 0.5)
        if cfg.input_taps not in (1, 2):
            raise ValueError(f"input_taps must be 1 or 2, not {cfg.input_taps}")
        self.inj_gain_delayed = None
        if cfg.input_taps == 2:
            # Every second neuron of a channel starts as a rectifying differentiator, g·(x_t − x_{t−1}) from
            # rest (no bias): it fires only while its channel moves by more than about ϑ/g per sample, whatever
            # the watch's orientation, so its count grows with the movement's amplitude. Accelerometer windows
            # move 0.05 (typing, writing) to 1 (dribbling) normalised units, gravity's level across wearers
            # spans more: level-coding neurons of gain ~1 barely see the difference, hence gains spread
            # log-uniformly over 1–30. (Left at zero, or as g·x_t − g·x_{t−1} + b with the level neurons' gains
            # and biases, the delayed synapse moved nothing on a fold.)
            odd = self.inj_gain[:, 1::2]
            gain = torch.exp(torch.empty_like(odd).uniform_(0.0, DIFFERENTIATOR_MAX_LOG_GAIN)) * torch.sign(odd)
            with torch.no_grad():
                self.inj_gain[:, 1::2] = gain
                self.inj_bias[:, 1::2] = 0.0
            delayed = torch.zeros(c, p)
            delayed[:, 1::2] = -gain
            self.inj_gain_delayed = nn.Parameter(delayed)
            # Spreads a sample [.., C] over its channels' populations [.., C·P] as one linear map: the delayed
            # current leaves `step` as state, and a reshape of a batch-dynamic tensor as a method's last op is
            # one XNNPACK leaves outside its delegate (the agent's runner has no kernel for it).
            spread = torch.kron(torch.eye(c), torch.ones(p, 1))
            self.register_buffer("channel_spread", spread, persistent=False)
        self.fc_in1 = nn.Linear(c * p, cfg.input_hidden)
        self.fc_in2 = nn.Linear(cfg.input_hidden, cfg.input_hidden)
        x_dim = cfg.input_hidden
        self.e_x = nn.Linear(x_dim, d)
        self.e_h = nn.Linear(h, d, bias=False)
        self.e_m = nn.Linear(d * q, d, bias=False)
        self.memory = LegendreMemory(q, cfg.theta)
        self.w_x = nn.Linear(x_dim, h)
        self.w_h = nn.Linear(h, h, bias=False)
        self.w_m = nn.Linear(d * q, h, bias=False)
        self.fc_out = nn.Linear(h, cfg.n_classes * cfg.output_population)
        self.drop = nn.Dropout(cfg.dropout)
        # Averages each class's output population: a fixed linear map, so it stays inside
        # the delegated graph on export.
        pool = torch.kron(torch.eye(cfg.n_classes), torch.full((1, cfg.output_population), 1 / cfg.output_population))
        self.register_buffer("class_pool", pool, persistent=False)
        self.lif = nn.ModuleDict({
            name: _population(cfg, cfg.memory_threshold if name == "m" else cfg.threshold) for name in POPULATIONS
        })
        # True while tracing for export: same values, far smaller graph (see _fire_for_graph).
        self.graph_mode = False
        # True to run snnTorch's own neuron modules step by step: the reference that the fast
        # training path is tested against, and what hooks on `self.lif` (SynOps counting) need.
        self.use_snntorch = False

    # ---- state ---------------------------------------------------------------------------
    def population_sizes(self) -> dict[str, int]:
        cfg = self.cfg
        return {
            "inj": cfg.n_channels * cfg.input_population,
            "in1": cfg.input_hidden,
            "in2": cfg.input_hidden,
            "u": cfg.memory_size,
            "m": cfg.memory_size * cfg.order,
            "h": cfg.hidden,
            "out": cfg.n_classes * cfg.output_population,
        }

    def state_names(self) -> list[str]:
        """Flat names of the recurrent state tensors, in the order ``step`` takes and returns them."""
        kinds = ("syn", "mem") if self.cfg.neuron == "synaptic" else ("mem",)
        names = [f"{pop}.{kind}" for pop in POPULATIONS for kind in kinds]
        # Previous spikes of the recurrent populations feed back into u and h; with a delayed input
        # synapse, the current it delivers at the next sample.
        return names + ["spk_h", "spk_m"] + (["inj.delayed"] if self.cfg.input_taps == 2 else [])

    def state_shapes(self, batch: int = 1) -> list[tuple[int, ...]]:
        sizes = self.population_sizes()
        # "pop.kind" parts are as wide as their population; spk_h and spk_m as h and m.
        return [(batch, sizes[name.removeprefix("spk_").split(".")[0]]) for name in self.state_names()]

    def initial_state(self, batch: int = 1) -> list[Tensor]:
        device = self.inj_gain.device
        return [torch.zeros(s, device=device) for s in self.state_shapes(batch)]

    # ---- dynamics ------------------------------------------------------------------------
    def _fire(self, name: str, current: Tensor, state: list[Tensor], k: int) -> tuple[Tensor, int]:
        """Advance population `name` whose state starts at state[k]; returns spikes and next k."""
        lif = self.lif[name]
        if self.graph_mode:
            return self._fire_for_graph(lif, current, state, k)
        if self.cfg.neuron == "synaptic":
            spk, syn, mem = lif(current, state[k], state[k + 1])
            state[k], state[k + 1] = syn, mem
            return spk, k + 2
        spk, mem = lif(current, state[k])
        state[k] = mem
        return spk, k + 1

    def _fire_for_graph(self, lif: nn.Module, current: Tensor, state: list[Tensor], k: int) -> tuple[Tensor, int]:
        """snnTorch's Leaky/Synaptic update (subtractive reset, delayed), written with the fewest ops.

        snnTorch's modules add surrogate-gradient, clone/detach and dtype plumbing to every
        step; traced 40 times that makes export minutes long. Forward values are identical
        (checked by tests against the snnTorch modules).
        """
        thr = lif.threshold
        if self.cfg.neuron == "synaptic":
            syn_prev, mem_prev = state[k], state[k + 1]
            syn = lif.alpha.clamp(0, 1) * syn_prev + current
            mem = lif.beta.clamp(0, 1) * mem_prev + syn - _heaviside(mem_prev - thr) * thr
            state[k], state[k + 1] = syn, mem
            return _heaviside(mem - thr), k + 2
        mem_prev = state[k]
        mem = lif.beta.clamp(0, 1) * mem_prev + current - _heaviside(mem_prev - thr) * thr
        state[k] = mem
        return _heaviside(mem - thr), k + 1

    def _injection(self, x: Tensor) -> Tensor:
        """Input currents [..., C·P] of the encoding-free module for samples x [..., C] (without the delayed tap)."""
        return (x.unsqueeze(-1) * self.inj_gain + self.inj_bias).flatten(-2)

    def window_input_currents(self, x: Tensor) -> Tensor:
        """Input currents [B, T, C·P] for windows x [B, T, C] from rest, the delayed tap included."""
        cur = self._injection(x)
        if self.inj_gain_delayed is not None:
            delayed = (x[:, :-1].unsqueeze(-1) * self.inj_gain_delayed).flatten(-2)
            cur = cur + torch.cat([torch.zeros_like(cur[:, :1]), delayed], 1)
        return cur

    def step(self, x_t: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """One sample. x_t [B, C] → (output spikes [B, n_classes] over its `substeps` network steps, *new state)."""
        cur = self._injection(x_t)
        if self.inj_gain_delayed is not None:
            *state, delayed = state
            cur = cur + delayed
        out, *new = self._substep(cur, *state)
        for _ in range(self.cfg.substeps - 1):
            more, *new = self._substep(cur, *new)
            out = out + more
        if self.inj_gain_delayed is not None:
            new.append(nn.functional.linear(x_t, self.channel_spread) * self.inj_gain_delayed.flatten())
        return (out, *new)

    def _substep(self, cur: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        """One network step driven by the input currents cur [B, C·P]; state without the delayed tap."""
        new = list(state)
        spk_h_prev, spk_m_prev = new[-2], new[-1]
        batch = cur.shape[0]
        s, k = self._fire("inj", cur, new, 0)
        s, k = self._fire("in1", self.fc_in1(s), new, k)
        s_x, k = self._fire("in2", self.fc_in2(s), new, k)
        s_x = self.drop(s_x)
        s_u, k = self._fire("u", self.e_x(s_x) + self.e_h(spk_h_prev) + self.e_m(spk_m_prev), new, k)
        d, q = self.cfg.memory_size, self.cfg.order
        m_cur = self.memory(spk_m_prev.reshape(batch, d, q), s_u).reshape(batch, d * q)
        s_m, k = self._fire("m", m_cur, new, k)
        s_h, k = self._fire("h", self.w_x(s_x) + self.w_h(spk_h_prev) + self.w_m(s_m), new, k)
        s_o, k = self._fire("out", self.fc_out(self.drop(s_h)), new, k)
        new[-2], new[-1] = s_h, s_m
        return (nn.functional.linear(s_o, self.class_pool), *new)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, C] normalised samples → per-class spike counts [B, n_classes]."""
        if not (self.graph_mode or self.use_snntorch):
            return self.forward_layerwise(x)[0]
        state = self.initial_state(x.shape[0])
        counts = torch.zeros(x.shape[0], self.cfg.n_classes, device=x.device)
        for t in range(x.shape[1]):
            out, *state = self.step(x[:, t], *state)
            counts = counts + out
        return counts

    # ---- fast training path -------------------------------------------------------------
    def _lif_run(self, name: str, currents: Tensor) -> Tensor:
        """Spikes [B, T, N] of population `name` driven by currents [B, T, N], from rest.

        The input and output populations have no recurrent synapses, so a whole window's
        currents are known before the population runs: one matmul per layer for all T steps,
        and the population itself runs as one autograd node (`LIFSequence`)."""
        lif = self.lif[name]
        if self.cfg.neuron == "synaptic":
            return LIFSequence.apply(currents, lif.beta, lif.threshold, lif.alpha)
        return LIFSequence.apply(currents, lif.beta, lif.threshold, None)

    def forward_layerwise(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Same function as stepping ``step`` over the window with snnTorch's neurons (tested:
        equal values and gradients), evaluated layer by layer where the graph allows it.

        Returns counts [B, n_classes] and each population's spikes summed over time and
        averaged over neurons [B] (for firing-rate terms and reports)."""
        cfg = self.cfg
        cur = self.window_input_currents(x)
        if cfg.substeps > 1:
            cur = cur.repeat_interleave(cfg.substeps, dim=1)
        b, steps, _ = cur.shape
        d, q = cfg.memory_size, cfg.order
        s = self._lif_run("inj", cur)
        s = self._lif_run("in1", self.fc_in1(s))
        s_x = self.drop(self._lif_run("in2", self.fc_in2(s)))
        drive_u, drive_h = self.e_x(s_x), self.w_x(s_x)
        lif_u, lif_m, lif_h = self.lif["u"], self.lif["m"], self.lif["h"]
        two = 2 if cfg.neuron == "synaptic" else 1
        st_u = [x.new_zeros(b, d)] * two
        st_m = [x.new_zeros(b, d * q)] * two
        st_h = [x.new_zeros(b, cfg.hidden)] * two
        s_h, s_m = x.new_zeros(b, cfg.hidden), x.new_zeros(b, d * q)
        hs, rate_u, rate_m = [], x.new_zeros(b), x.new_zeros(b)
        # unbind, not drive[:, t]: each indexing's backward would zero-fill the whole window.
        for du, dh in zip(drive_u.unbind(1), drive_h.unbind(1), strict=True):
            s_u, st_u = lif_update(lif_u, du + self.e_h(s_h) + self.e_m(s_m), st_u)
            m_cur = self.memory(s_m.reshape(b, d, q), s_u).reshape(b, d * q)
            s_m, st_m = lif_update(lif_m, m_cur, st_m)
            s_h, st_h = lif_update(lif_h, dh + self.w_h(s_h) + self.w_m(s_m), st_h)
            hs.append(s_h)
            rate_u = rate_u + s_u.mean(1)
            rate_m = rate_m + s_m.mean(1)
        s_hs = torch.stack(hs, dim=1)
        s_o = self._lif_run("out", self.fc_out(self.drop(s_hs)))
        counts = nn.functional.linear(s_o.sum(1), self.class_pool)
        rates = {"u": rate_u / steps, "m": rate_m / steps, "h": s_hs.mean((1, 2)), "out": s_o.mean((1, 2))}
        return counts, rates


class _FastSigmoidSpike(torch.autograd.Function):
    """Heaviside forward, fast-sigmoid surrogate backward: snnTorch's ``FastSigmoid`` (slope 25)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad / (SURROGATE_SLOPE * x.abs() + 1.0) ** 2


class LIFSequence(torch.autograd.Function):
    """A feed-forward LIF (or, with alpha, current-based LIF) population over a whole window,
    with its backward pass through time written out: the same values and gradients as
    unrolling `lif_update` (tested), without recording thousands of autograd nodes.

    Forward: syn_t = α syn_{t−1} + I_t (Synaptic only), mem_t = β mem_{t−1} + syn_t − r_t ϑ,
    r_t = H(mem_{t−1} − ϑ) (detached), s_t = H(mem_t − ϑ) with the fast-sigmoid surrogate.
    Backward: g_mem_t = ∂L/∂s_t σ'_t + β g_mem_{t+1}; g_syn_t = g_mem_t + α g_syn_{t+1}."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, currents: Tensor, beta: Tensor, thr: Tensor,
                alpha: Tensor | None) -> Tensor:
        b_c = beta.clamp(0, 1)
        a_c = alpha.clamp(0, 1) if alpha is not None else None
        mem = torch.zeros_like(currents[:, 0])
        syn = torch.zeros_like(mem)
        mems, syns, resets = [], [], []
        for current in currents.unbind(1):
            reset = (mem > thr).to(currents.dtype)
            if a_c is not None:
                syn = a_c * syn + current
                syns.append(syn)
                current = syn
            mem = b_c * mem + current - reset * thr
            mems.append(mem)
            resets.append(reset)
        mem_all = torch.stack(mems, 1)
        syn_all = torch.stack(syns, 1) if a_c is not None else None
        ctx.save_for_backward(mem_all, torch.stack(resets, 1), beta, thr,
                              *((syn_all, alpha) if alpha is not None else ()))
        return (mem_all > thr).to(currents.dtype)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_spk: Tensor) -> tuple[Tensor | None, ...]:
        mem_all, reset_all, beta, thr, *syn = ctx.saved_tensors
        b_c = beta.clamp(0, 1)
        surrogate_in = grad_spk / (SURROGATE_SLOPE * (mem_all - thr).abs() + 1.0) ** 2
        g_mem = torch.empty_like(mem_all)
        running = torch.zeros_like(mem_all[:, 0])
        for t in range(mem_all.shape[1] - 1, -1, -1):
            running = surrogate_in[:, t] + b_c * running
            g_mem[:, t] = running
        mem_prev = torch.cat([torch.zeros_like(mem_all[:, :1]), mem_all[:, :-1]], 1)
        g_beta = (g_mem * mem_prev).sum() * ((beta >= 0) & (beta <= 1)).to(beta.dtype)
        g_thr = -(surrogate_in.sum() + (g_mem * reset_all).sum())
        if not syn:
            return g_mem, g_beta.reshape(beta.shape), g_thr.reshape(thr.shape), None
        syn_all, alpha = syn
        a_c = alpha.clamp(0, 1)
        g_syn = torch.empty_like(g_mem)
        running = torch.zeros_like(g_mem[:, 0])
        for t in range(g_mem.shape[1] - 1, -1, -1):
            running = g_mem[:, t] + a_c * running
            g_syn[:, t] = running
        syn_prev = torch.cat([torch.zeros_like(syn_all[:, :1]), syn_all[:, :-1]], 1)
        g_alpha = (g_syn * syn_prev).sum() * ((alpha >= 0) & (alpha <= 1)).to(alpha.dtype)
        return g_syn, g_beta.reshape(beta.shape), g_thr.reshape(thr.shape), g_alpha.reshape(alpha.shape)


def lif_update(lif: nn.Module, current: Tensor, state: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """One step of snnTorch's Leaky / Synaptic (subtractive reset by the previous step's
    spike, detached as snnTorch detaches it) without its per-call bookkeeping."""
    thr = lif.threshold
    if len(state) == 2:
        syn_prev, mem_prev = state
        reset = (mem_prev > thr).to(current.dtype)
        syn = lif.alpha.clamp(0, 1) * syn_prev + current
        mem = lif.beta.clamp(0, 1) * mem_prev + syn - reset * thr
        return _FastSigmoidSpike.apply(mem - thr), [syn, mem]
    (mem_prev,) = state
    reset = (mem_prev > thr).to(current.dtype)
    mem = lif.beta.clamp(0, 1) * mem_prev + current - reset * thr
    return _FastSigmoidSpike.apply(mem - thr), [mem]
