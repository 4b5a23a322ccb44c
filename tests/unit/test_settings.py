"""`run --config FILE`: validation with one-line errors, precedence, and a run driven by the file alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from l2mu.agent.settings import (
    MQTT_TABLE,
    TOP_LEVEL,
    ConfigError,
    Settings,
    environment_overrides,
    load_config,
    merge_options,
)
from tests.support.settings import write


def test_file_values_become_run_options_with_paths_next_to_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'watches = ["demo", "replay:rec.csv"]\nmodel = "m.pte"\nsmoothing_window = 3\n'
                           'decision_period = 2\n[mqtt]\nurl = "mqtt://b.lan"\npassword_file = "pw"\n')
    assert load_config(path) == {
        "watch": ["demo", f"replay:{tmp_path / 'rec.csv'}"], "model": str(tmp_path / "m.pte"),
        "smoothing_window": 3, "decision_period": 2.0, "mqtt": "mqtt://b.lan", "password_file": tmp_path / "pw",
    }


@pytest.mark.parametrize("text,message", [
    ("[mqtt]\nurl = 1883\n", "mqtt.url: expected a string, got 1883"),
    ('watches = "demo"\n', "watches: expected a list of strings, got 'demo'"),
    ("queue_size = true\n", "queue_size: expected an integer, got true"),
    ("smoothing_window = 0\n", "smoothing_window: must be at least 1, got 0"),
    ('smoothing = "median"\n', "smoothing: must be one of majority, hmm, none, got 'median'"),
    ('[mqtt]\nurl = "http://b.lan"\n', "mqtt.url: broker URL 'http://b.lan': scheme must be mqtt://"),
    ('watches = ["AA:BB"]\n', "watches: 'AA:BB' is not 'demo', 'replay:FILE' or a Bluetooth address"),
    ('[mqtt]\nprotocol = 5\n', "mqtt.protocol: expected a string, got 5"),
    ('mqtt = "mqtt://b.lan"\n', "mqtt: expected a table ([mqtt]), got 'mqtt://b.lan'"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: {message}")


def test_unknown_keys_are_errors_at_both_levels(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.toml: watch: unknown key \(known: watches, "):
        load_config(write(tmp_path, 'watch = ["demo"]\n'))
    with pytest.raises(ConfigError, match=r"config.toml: mqtt.host: unknown key \(known: url, "):
        load_config(write(tmp_path, '[mqtt]\nhost = "b.lan"\n'))


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.toml: cannot read it \(No such file or directory\)"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="config.toml: not valid TOML"):
        load_config(write(tmp_path, "watches = [\n"))


def test_precedence_command_line_then_environment_then_file_then_default() -> None:
    defaults = {"watch": None, "mqtt": None, "model": None, "topic_prefix": "har", "smoothing_window": 5,
                "password_file": None}
    given = {**defaults, "model": "cli-model"}
    env = environment_overrides({"L2MU_MODEL": "env-model", "L2MU_MQTT_URL": "mqtt://env:1", "L2MU_WATCHES":
                                 " demo , replay:x.csv,", "L2MU_TOPIC_PREFIX": ""})
    file = {"model": "file-model", "mqtt": "mqtt://file:1", "topic_prefix": "file", "watch": ["demo"],
            "password_file": Path("/etc/pw")}
    merged = merge_options(given, {"model"}, env, file)
    assert merged == {"watch": ["demo", "replay:x.csv"], "mqtt": "mqtt://env:1", "model": "cli-model",
                      "topic_prefix": "file", "smoothing_window": 5, "password_file": Path("/etc/pw")}
    # A password in the environment outranks the file's password_file.
    assert merge_options(defaults, set(), environment_overrides({"L2MU_MQTT_PASSWORD": "s"}),
                         file)["password_file"] is None


def test_every_run_option_is_a_setting_with_its_default_there() -> None:
    """`run`'s defaults are the settings' defaults: typer, the config file and the agent read one place."""
    import dataclasses
    import inspect

    from l2mu.agent.cli.run import run
    from l2mu.agent.settings import DEFAULTS, Settings

    fields = {f.name for f in dataclasses.fields(Settings)}
    for name, param in inspect.signature(run).parameters.items():
        if name in ("ctx", "config"):
            continue
        assert name in fields, name
        if param.default is not None and name != "watch":
            assert param.default == getattr(DEFAULTS, name), name
    assert {option for option, _ in TOP_LEVEL.values()} | {option for option, _ in MQTT_TABLE.values()} <= fields


def test_live_watch_timings_come_from_the_file_and_reach_the_ble_options(tmp_path: Path) -> None:
    from l2mu.agent.ble import BleOptions
    from l2mu.agent.settings import DEFAULTS

    # Defaults: kept for ever, 1 s doubling to 60 s, the one place BleOptions takes them from.
    assert DEFAULTS.retry_budget is None and (DEFAULTS.backoff_initial, DEFAULTS.backoff_max) == (1.0, 60.0)
    options = BleOptions()
    assert (options.retry_budget_s, options.backoff_initial_s, options.backoff_max_s, options.stall_timeout_s) == \
        (None, DEFAULTS.backoff_initial, DEFAULTS.backoff_max, DEFAULTS.stall_timeout)
    file = load_config(write(tmp_path, "backoff_initial = 0.2\nbackoff_max = 1\nstall_timeout = 1.5\n"
                                       "state_interval = 2\nretry_budget = 30\n"))
    # Settings that are no `run` option still come through (the command line gives only its own).
    merged = merge_options({"watch": None, "retry_budget": None}, set(), {}, file)
    assert merged == {"watch": None, "retry_budget": 30.0, "backoff_initial": 0.2, "backoff_max": 1.0,
                      "stall_timeout": 1.5, "state_interval": 2.0}
    with pytest.raises(ConfigError, match="stall_timeout: must be at least 0.1, got 0"):
        load_config(write(tmp_path, "stall_timeout = 0\n"))


def test_file_options_given_as_text_become_paths() -> None:
    """typer hands `ctx.params` over as parsed by its click: paths may still be text there."""
    s = Settings.from_options({"password_file": "/etc/l2mu-agent/pw", "queue_dir": "/var/lib/q", "model": "m.pte"})
    assert s.password_file == Path("/etc/l2mu-agent/pw") and s.queue_dir == Path("/var/lib/q")
    assert s.model == "m.pte"  # a model is a name or a path: it stays as given
