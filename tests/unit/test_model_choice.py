"""A watch without the sensors the model needs gets the model with the same classes for the sensors it has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from l2mu.agent.model_choice import model_for_sensors
from l2mu.agent.sources import SourceError
from l2mu.model.metadata import ModelMetadata, read_metadata

HAND7 = ["F", "G", "O", "P", "Q", "R", "S"]


HAND8 = [*HAND7, "X"]


def program(folder: Path, name: str, classes: list[str], sensors: list[str]) -> Path:
    """A program file with its metadata beside it (no hash recorded, so any bytes stand in for the program)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pte"
    path.write_bytes(b"not really a program")
    channels = 3 * len(sensors)
    meta = ModelMetadata(name=name, classes=classes, class_names=classes, sensors=sensors, sample_rate_hz=20.0,
                         window_samples=40, norm_mean=[0.0] * channels, norm_std=[1.0] * channels)
    path.with_suffix(".json").write_text(json.dumps(meta.to_dict()))
    return path


def test_a_watch_with_every_sensor_keeps_the_configured_model(tmp_path: Path) -> None:
    main = program(tmp_path / "mine", "hand8-acc-gyro", HAND8, ["acc", "gyro"])
    program(tmp_path / "mine", "hand8-acc", HAND8, ["acc"])
    assert model_for_sensors(read_metadata(main), main, {"acc", "gyro"}, "w", bundled=tmp_path / "none") == main


def test_accelerometer_only_watch_gets_the_accelerometer_model_with_the_same_classes(tmp_path: Path) -> None:
    bundled = tmp_path / "bundled"
    main = program(bundled, "hand8-acc-gyro", HAND8, ["acc", "gyro"])
    program(bundled, "hand7-acc", HAND7, ["acc"])  # other classes: never a substitute
    program(bundled, "hand8-gyro", HAND8, ["gyro"])  # a sensor the watch lacks
    wanted = program(bundled, "hand8-acc", HAND8, ["acc"])
    assert model_for_sensors(read_metadata(main), main, {"acc"}, "w", bundled=bundled) == wanted


def test_a_program_beside_the_configured_one_comes_before_the_bundled_ones(tmp_path: Path) -> None:
    main = program(tmp_path / "mine", "custom", HAND7, ["acc", "gyro"])
    beside = program(tmp_path / "mine", "custom-acc", HAND7, ["acc"])
    program(tmp_path / "bundled", "hand7-acc", HAND7, ["acc"])
    assert model_for_sensors(read_metadata(main), main, {"acc"}, "w", bundled=tmp_path / "bundled") == beside


def test_a_broken_candidate_is_skipped(tmp_path: Path) -> None:
    main = program(tmp_path, "hand7-acc-gyro", HAND7, ["acc", "gyro"])
    broken = program(tmp_path, "a-broken", HAND7, ["acc"])
    broken.with_suffix(".json").write_text("{not json")
    good = program(tmp_path, "b-good", HAND7, ["acc"])
    assert model_for_sensors(read_metadata(main), main, {"acc"}, "w", bundled=tmp_path / "none") == good


def test_no_substitute_is_one_clear_line(tmp_path: Path) -> None:
    main = program(tmp_path / "mine", "hand7-acc-gyro", HAND7, ["acc", "gyro"])
    program(tmp_path / "bundled", "hand8-acc", HAND8, ["acc"])
    with pytest.raises(SourceError) as error:
        model_for_sensors(read_metadata(main), main, {"acc"}, "C0_FF_EE_00_00_02", bundled=tmp_path / "bundled")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("C0_FF_EE_00_00_02 streams acc but has no gyro; model hand7-acc-gyro needs acc+gyro, "
                              "and no model with the same classes for acc is bundled")
