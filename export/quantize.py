"""int8 post-training quantisation (PT2E, XNNPACK quantizer) of the L2MU's Linear layers.

Only the nine `nn.Linear` synapse layers are quantised: int8 per-channel symmetric weights, int8
per-tensor activations calibrated on training-subject windows (the XNNPACK quantizer's static
configuration). Their inputs are spikes, 0 or 1, which int8 represents exactly; their outputs —
the synaptic currents — get 256 calibrated levels. Everything that decides when a neuron fires
(decay, threshold, Heaviside as ceil(clamp)), the fixed Legendre memory matrices and the class
pooling stay fp32, so quantisation cannot move a threshold, only the currents that reach it.

The step core is quantised once, with observers that see every time step of every calibration
window, and both program methods are built from that one quantised core: `forward` and `step`
use the same scales, so `step` applied T times still equals `forward`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from l2mu.export.programs import StepCore
from l2mu.model.l2mu import L2MU

QUANTIZATION = {
    "scheme": "pt2e-static",
    "quantizer": "XNNPACKQuantizer",
    "layers": "nn.Linear",
    "weights": "int8 per-channel symmetric",
    "activations": "int8 per-tensor affine, calibrated",
}


def quantize_core(net: L2MU, calibration: np.ndarray, batch: int = 256) -> nn.Module:
    """The step core with int8 Linear layers (a PT2E-converted GraphModule).

    calibration: normalised windows [W, T, C] from training subjects (never test subjects)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration.ndim != 3 or len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one window [W, T, C]")
    core = StepCore(net)
    batch = min(batch, len(calibration))
    state = net.initial_state(batch)
    x_t = torch.zeros(batch, net.cfg.n_channels)
    # A symbolic batch lets calibration run whole batches of windows through the observed step.
    b = torch.export.Dim("batch", min=1, max=max(2, len(calibration)))
    dynamic = ({0: b}, tuple({0: b} for _ in state))  # (x_t, *state): varargs form one tuple
    with torch.no_grad():
        traced = torch.export.export(core, (x_t, *state), dynamic_shapes=dynamic, strict=False).module()
    quantizer = XNNPACKQuantizer().set_module_type(nn.Linear, get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(traced, quantizer)
    with torch.no_grad():
        for i in range(0, len(calibration), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(calibration[i : i + batch], dtype=np.float32))
            st = net.initial_state(len(chunk))
            for t in range(chunk.shape[1]):
                _, *st = prepared(chunk[:, t], *st)
    return convert_pt2e(prepared)
