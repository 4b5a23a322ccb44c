"""Save and load trained L2MU checkpoints (weights + config + metadata, no pickled code)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from l2mu.model.l2mu import L2MU, L2MUConfig
from l2mu.model.metadata import ModelFileError, ModelMetadata


@dataclass
class Checkpoint:
    model: L2MU
    metadata: ModelMetadata


def save_checkpoint(path: Path, model: L2MU, meta: ModelMetadata) -> None:
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
        model = L2MU(L2MUConfig(**meta.model_config))
        model.load_state_dict(blob["state_dict"])
    except ModelFileError:
        raise
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelFileError(f"{path}: not a usable L2MU checkpoint ({type(exc).__name__}: {exc})") from exc
    return Checkpoint(model.eval(), meta)
