"""What the agent must know about a model to feed it and read it, stored beside the program."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the agent reads metadata without torch installed
    from torch import nn

FORMAT_VERSION = 1
SENSOR_UNITS = {"acc": "m/s^2", "gyro": "rad/s"}


class ModelFileError(RuntimeError):
    """A model file or its metadata is missing, corrupt or from an incompatible version."""


@dataclass
class ModelMetadata:
    name: str
    classes: list[str]  # WISDM activity codes, in output order
    class_names: list[str]
    sensors: list[str]  # e.g. ["acc", "gyro"]; channel order is sensors × (x, y, z)
    sample_rate_hz: float
    window_samples: int
    norm_mean: list[float]
    norm_std: list[float]
    model_config: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    state: list[dict] = field(default_factory=list)  # layout of the `step` method's state
    # How the program was compressed: {"weights": "fp32" | "int8", "quantization": {...}, "pruning": {...}}.
    variant: dict = field(default_factory=dict)
    # The most chains one `step` call takes (its batch dimension); 0 in programs whose step took one sample.
    step_batch_max: int = 0
    # Samples per call of the `chunk` method (a window is window_samples / chunk_samples calls); 0 in programs
    # that ran a window as one unrolled `forward`.
    chunk_samples: int = 0
    program_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def channels(self) -> list[str]:
        return [f"{s}_{axis}" for s in self.sensors for axis in "xyz"]

    @property
    def units(self) -> dict[str, str]:
        return {s: SENSOR_UNITS[s] for s in self.sensors}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = self.channels
        d["units"] = self.units
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelMetadata:
        if d.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(
                f"model metadata format {d.get('format_version')!r} is not supported (expected {FORMAT_VERSION})"
            )
        names = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as exc:
            raise ModelFileError(f"model metadata incomplete: {exc}") from exc


def metadata_path(program: Path) -> Path:
    return Path(program).with_suffix(".json")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_metadata(program: Path, meta: ModelMetadata, net: nn.Module | None = None) -> ModelMetadata:
    if net is not None and hasattr(net, "state_names"):
        meta.state = [
            {"name": n, "shape": list(s)} for n, s in zip(net.state_names(), net.state_shapes(1), strict=True)
        ]
    meta.program_sha256 = sha256_file(program)
    path = metadata_path(program)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta.to_dict(), indent=2) + "\n")
    tmp.replace(path)
    return meta


def read_metadata(program: Path) -> ModelMetadata:
    path = metadata_path(program)
    if not path.is_file():
        raise ModelFileError(f"{program}: metadata file {path.name} missing beside the program")
    try:
        meta = ModelMetadata.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if meta.program_sha256 and sha256_file(program) != meta.program_sha256:
        raise ModelFileError(f"{program}: does not match its metadata (truncated, corrupt or from another export)")
    return meta
