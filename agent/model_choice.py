"""Which model a watch can feed: the configured one, or one for fewer sensors with the same classes.

A model trained on accelerometer + gyroscope cannot run on a watch without gyroscope (InfiniTime,
Bangle.js, a Polar OH1). The agent then looks for a program that recognises the same classes from
the sensors the watch has — beside the configured program first, then among the bundled models —
and takes the one using the most of those sensors (`hand8-acc` for `hand8-acc-gyro`, say).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from l2mu.agent.sources import SourceError
from l2mu.model.metadata import ModelFileError, ModelMetadata, read_metadata


def candidate_programs(program: Path, bundled: Path | None) -> list[Path]:
    """Programs beside `program`, then the bundled ones, each once."""
    folders = [Path(program).resolve().parent]
    if bundled is not None and bundled.is_dir():
        folders.append(bundled.resolve())
    seen: set[Path] = {Path(program).resolve()}
    out = []
    for folder in folders:
        for path in sorted(folder.glob("*.pte")):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                out.append(path)
    return out


def model_for_sensors(meta: ModelMetadata, program: Path, available: Iterable[str], watch: str,
                      bundled: Path | None = None) -> Path:
    """`program` if the watch streams every sensor it needs, else the best program with the same classes
    that needs only `available` sensors. SourceError (one line) if there is none."""
    have = set(available)
    if set(meta.sensors) <= have:
        return Path(program)
    if bundled is None:
        from l2mu.agent.runtime import bundled_dir

        bundled = bundled_dir()
    best: tuple[int, Path] | None = None
    for path in candidate_programs(Path(program), bundled):
        try:
            other = read_metadata(path)
        except ModelFileError:
            continue  # a half-written or foreign program is simply not a candidate
        if other.classes != meta.classes or not set(other.sensors) <= have:
            continue
        if best is None or len(other.sensors) > best[0]:
            best = (len(other.sensors), path)
    if best is None:
        missing = "+".join(s for s in meta.sensors if s not in have)
        raise SourceError(f"{watch} streams {'+'.join(sorted(have)) or 'nothing'} but has no {missing}; model "
                          f"{meta.name} needs {'+'.join(meta.sensors)}, and no model with the same classes for "
                          f"{'+'.join(sorted(have)) or 'these sensors'} is bundled or beside {Path(program).name} "
                          f"(l2mu-agent models lists the bundled ones)")
    return best[1]
