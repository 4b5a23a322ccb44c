"""The agent's settings: one dataclass holding every default once, and what fills it in.

`Settings` is what `build_agent` (l2mu.agent.compose) builds an agent from; the `run` command's
options, the TOML file of `run --config FILE` and the L2MU_* environment variables all map onto
its fields, which carry the names of the `run` options. Precedence, highest first: an option
given on the command line, an environment override, the config file, the default here.
Everything is checked before the model loads, so a typo in the file ends the agent with one
line naming the key instead of a half-started service.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2mu.agent.errors import ConfigError, MqttError

SMOOTHING_KINDS = ("majority", "hmm", "none")
INFERENCE_KINDS = ("step", "window")
BROKER_KINDS = ("auto", "mosquitto", "amqtt")

STANDARD_GRAVITY = 9.80665  # m/s² per g
# The largest magnitude per axis a real watch can report, in the agent's units (m/s², rad/s): twice the
# widest range any supported IMU is set to (±16 g, ±2000 °/s). A sample beyond it, or not finite, is a
# decoding bug or a corrupt recording, never a movement: the pipeline drops it and restarts the windows
# around it as at a gap (l2mu.agent.pipeline), so it reaches neither the model's state nor a payload.
SENSOR_LIMITS: dict[str, float] = {"acc": 2 * 16 * STANDARD_GRAVITY, "gyro": 2 * 2000 * math.pi / 180}


@dataclass
class Settings:
    """One agent, completely described. Field names are the `run` options' (`--queue-size` → queue_size)."""

    watch: list[str] = field(default_factory=list)  # `demo`, `replay:FILE` or Bluetooth addresses
    protocol: list[str] | None = None  # per Bluetooth watch, or one for all; None: recognise each
    scan_timeout: float = 10.0  # seconds to look for a watch BlueZ does not know yet
    # Seconds to keep looking for a watch absent at start or reconnecting after a link loss; None: forever
    # (a watch on its charger is not a configuration error).
    retry_budget: float | None = None
    mqtt: str | None = None  # broker URL; None: start a local broker
    model: str | None = None  # bundled name or .pte; None: the bundled default
    speed: float = 1.0  # replay speed (0: as fast as possible)
    agent_id: str | None = None  # None: the host name
    topic_prefix: str = "har"
    decision_period: float = 1.0  # seconds between decisions
    echo: bool | None = None  # print what subscribers receive; None: when the agent starts its own broker
    broker: str = "auto"  # local broker kind: auto, mosquitto, amqtt
    smoothing: str = "hmm"  # chosen by cross-validation over 30 wearers (MODEL.md, "Decision smoothing")
    smoothing_window: int = 5
    raw_scores: bool = False
    ha_discovery: bool = False
    ha_prefix: str = "homeassistant"
    queue_dir: Path | None = None
    queue_size: int = 100_000  # undelivered decisions kept: more than a day of one watch at one a second
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    mqtt_protocol: str | None = None  # "5" or "3.1.1"; None: 5, or 3.1.1 for the embedded amqtt broker
    # Not options of `run`: the load bench and the tests set them.
    inference: str = "step"  # "step": the model advances on every sample; "window": the `chunk` method over each window
    intake_queue: int = 1024  # samples per watch waiting for the pipeline: ~10 s of a 52 Hz acc + gyro watch
    intake_max_age_s: float = 1.0  # a sample older than this is useless to a decision published once a second
    slow_broker_s: float = 5.0  # a connected broker that acknowledged nothing for this long is reported as slow
    # A broker not reached (at start or after a loss) is tried again after 1 s, doubling to 30 s.
    mqtt_retry_min_s: float = 1.0
    mqtt_retry_max_s: float = 30.0
    drain_s: float = 10.0  # how long a stopping agent waits for the broker to take what is still queued
    # Live watches (config file keys of the same name; the tests shorten them).
    backoff_initial: float = 1.0  # seconds before the second attempt to find or connect a watch; doubles each time
    backoff_max: float = 60.0  # the most seconds between two attempts
    # A connected watch silent this long is treated as a lost link: well above every protocol's frame interval
    # (InfiniTime's 1 s poll is the longest), short enough that a watch BlueZ stopped serving comes back quickly.
    stall_timeout: float = 5.0
    state_interval: float = 60.0  # seconds between two <prefix>/watch/<watch>/state messages when nothing changed

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Settings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"not settings: {', '.join(sorted(unknown))}")  # a bug in the caller, not the user's
        values = dict(options)
        if values.get("watch") is None:
            values["watch"] = []
        for f in dataclasses.fields(cls):  # the CLI's parsed values may arrive as text (typer gives ctx.params so)
            if "Path" in str(f.type) and isinstance(values.get(f.name), str):
                values[f.name] = Path(values[f.name])
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


DEFAULTS = Settings()


Check = Callable[[str, Any], Any]  # (key, raw value) -> the `run` option's value; raises ConfigError


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    return str(value)


def _string(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {_describe(value)}")
    return value


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
    return value


def _integer(minimum: int) -> Check:
    def check(key: str, value: Any) -> int:
        # bool is an int in Python, but `queue_size = true` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {_describe(value)}")
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value}")
        return value

    return check


def _number(minimum: float) -> Check:
    def check(key: str, value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
        if value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum:g}, got {value}")
        return float(value)

    return check


def _choice(*allowed: str) -> Check:
    def check(key: str, value: Any) -> str:
        _string(key, value)
        if value not in allowed:
            raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {value!r}")
        return value

    return check


def _url(key: str, value: Any) -> str:
    from l2mu.agent.mqtt import BrokerAddress

    _string(key, value)
    try:
        BrokerAddress.parse(value)
    except MqttError as exc:
        raise ConfigError(f"{key}: {exc}") from None
    return value


def _watch_spec(key: str, spec: str) -> None:
    from l2mu.agent.sources import MAC_RE

    if spec == "demo" or (spec.startswith("replay:") and len(spec) > len("replay:")) or MAC_RE.match(spec):
        return
    raise ConfigError(f"{key}: {spec!r} is not 'demo', 'replay:FILE' or a Bluetooth address like "
                      f"AA:BB:CC:DD:EE:FF")


def _watches(key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key}: expected a list of strings, got {_describe(value)}")
    if not value:
        raise ConfigError(f"{key}: the list is empty; give at least one watch")
    for spec in value:
        _watch_spec(key, spec)
    return list(value)


# config key -> (`run` parameter name, check)
TOP_LEVEL: dict[str, tuple[str, Check]] = {
    "watches": ("watch", _watches),
    "model": ("model", _string),
    "agent_id": ("agent_id", _string),
    "topic_prefix": ("topic_prefix", _string),
    "decision_period": ("decision_period", _number(0.05)),
    "smoothing": ("smoothing", _choice(*SMOOTHING_KINDS)),
    "smoothing_window": ("smoothing_window", _integer(1)),
    "raw_scores": ("raw_scores", _boolean),
    "ha_discovery": ("ha_discovery", _boolean),
    "ha_prefix": ("ha_prefix", _string),
    "queue_dir": ("queue_dir", _string),
    "queue_size": ("queue_size", _integer(1)),
    "scan_timeout": ("scan_timeout", _number(0.1)),
    "retry_budget": ("retry_budget", _number(0.1)),
    "backoff_initial": ("backoff_initial", _number(0.01)),
    "backoff_max": ("backoff_max", _number(0.01)),
    "stall_timeout": ("stall_timeout", _number(0.1)),
    "state_interval": ("state_interval", _number(0.1)),
}
MQTT_TABLE: dict[str, tuple[str, Check]] = {
    "url": ("mqtt", _url),
    "username": ("username", _string),
    "password_file": ("password_file", _string),
    "ca_file": ("ca_file", _string),
    "cert_file": ("cert_file", _string),
    "key_file": ("key_file", _string),
    "protocol": ("mqtt_protocol", _choice("5", "3.1.1")),
}
PATH_OPTIONS = {"queue_dir", "password_file", "ca_file", "cert_file", "key_file"}


def _relative_to(base: Path, value: str) -> Path:
    # Relative paths mean "next to the config file", not "wherever systemd started the agent".
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _localise(option: str, value: Any, base: Path) -> Any:
    if option in PATH_OPTIONS:
        return _relative_to(base, value)
    if option == "watch":
        return [f"replay:{_relative_to(base, s.removeprefix('replay:'))}" if s.startswith("replay:") else s
                for s in value]
    if option == "model" and value.endswith(".pte"):
        return str(_relative_to(base, value))
    return value


def _table(items: Mapping[str, Any], schema: dict[str, tuple[str, Check]], prefix: str,
           base: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in items.items():
        if key not in schema:
            known = ", ".join(schema)
            raise ConfigError(f"{prefix}{key}: unknown key (known: {known})")
        option, check = schema[key]
        out[option] = _localise(option, check(prefix + key, value), base)
    return out


def load_config(path: Path) -> dict[str, Any]:
    """The `run` options the file sets, keyed by parameter name; ConfigError names the file and the key."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    base = path.resolve().parent
    try:
        mqtt = data.pop("mqtt", {})
        if not isinstance(mqtt, dict):
            raise ConfigError(f"mqtt: expected a table ([mqtt]), got {_describe(mqtt)}")
        return {**_table(data, TOP_LEVEL, "", base), **_table(mqtt, MQTT_TABLE, "mqtt.", base)}
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`run` options set by L2MU_* variables. Empty ones count as unset: an EnvironmentFile often has `X=`."""
    out: dict[str, Any] = {}
    for var, option in (("L2MU_MQTT_URL", "mqtt"), ("L2MU_MODEL", "model"), ("L2MU_TOPIC_PREFIX", "topic_prefix"),
                        ("L2MU_MQTT_USERNAME", "username")):
        if environ.get(var):
            out[option] = environ[var]
    if "mqtt" in out:
        from l2mu.agent.mqtt import BrokerAddress

        try:
            BrokerAddress.parse(out["mqtt"])
        except MqttError as exc:
            raise ConfigError(f"L2MU_MQTT_URL: {exc}") from None
    if environ.get("L2MU_WATCHES"):
        watches = [s.strip() for s in environ["L2MU_WATCHES"].split(",") if s.strip()]
        for spec in watches:
            _watch_spec("L2MU_WATCHES", spec)
        if watches:
            out["watch"] = watches
    if environ.get("L2MU_MQTT_PASSWORD"):
        # The password from the environment outranks the file's password_file; None leaves it to MqttSecurity.
        out["password_file"] = None
    return out


def merge_options(given: Mapping[str, Any], explicit: set[str], environment: Mapping[str, Any],
                  file: Mapping[str, Any]) -> dict[str, Any]:
    """Each option from the command line if given there, else the environment, else the file, else its default."""
    out = dict(given)
    for name in given:
        if name in explicit:
            continue
        if name in environment:
            out[name] = environment[name]
        elif name in file:
            out[name] = file[name]
    for name, value in file.items():  # settings only the file sets (backoff_initial, stall_timeout, …)
        out.setdefault(name, value)
    return out
