"""Save and load trained checkpoints (weights + config + metadata, no pickled code).

The L2MU's config has no "arch" key; the non-spiking baselines' configs say "lmu" or "gru"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from l2mu.model.baselines import BaselineConfig, build_baseline
from l2mu.model.l2mu import L2MU, L2MUConfig
from l2mu.model.metadata import ModelFileError, ModelMetadata


@dataclass
class Checkpoint:
    model: nn.Module  # an L2MU, or a baseline where model_config["arch"] says so
    metadata: ModelMetadata


def build_model(config: dict) -> nn.Module:
    if "arch" in config:
        return build_baseline(BaselineConfig(**config))
    return L2MU(L2MUConfig(**config))


def save_checkpoint(path: Path, model: nn.Module, meta: ModelMetadata) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta.model_config = model.cfg.to_dict()
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"metadata": meta.to_dict(), "state_dict": model.state_dict()}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: checkpoint not found")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = ModelMetadata.from_dict(blob["metadata"])
        model = build_model(meta.model_config)
        model.load_state_dict(blob["state_dict"])
    except ModelFileError:
        raise
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelFileError(f"{path}: not a usable checkpoint ({type(exc).__name__}: {exc})") from exc
    return Checkpoint(model.eval(), meta)
