"""`l2mu-agent doctor`: what a Pi needs before `run` can work, checked one thing at a time."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from l2mu.agent.cli.app import app, one_line_errors

DEFAULT_SYSTEM_BUS = "/run/dbus/system_bus_socket"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.name}: {self.reason}"


def system_bus_path(environ: Mapping[str, str]) -> str:
    """The socket of $DBUS_SYSTEM_BUS_ADDRESS (unix:path=…), else the standard one."""
    for part in environ.get("DBUS_SYSTEM_BUS_ADDRESS", "").split(";"):
        if part.startswith("unix:"):
            for kv in part.removeprefix("unix:").split(","):
                if kv.startswith("path="):
                    return kv.removeprefix("path=")
    return DEFAULT_SYSTEM_BUS


def check_dbus(environ: Mapping[str, str] = os.environ) -> CheckResult:
    path = system_bus_path(environ)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect(path)
    except OSError as exc:
        return CheckResult("system D-Bus", False, f"cannot connect to {path} ({exc.strerror or exc})")
    finally:
        sock.close()
    return CheckResult("system D-Bus", True, f"{path} accepts connections")


def check_bluez() -> CheckResult:
    if shutil.which("dbus-send") is None:
        return CheckResult("BlueZ", False, "dbus-send is not installed (apt-get install dbus)")
    cmd = ["dbus-send", "--system", "--print-reply", "--reply-timeout=2000", "--dest=org.freedesktop.DBus",
           "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", "string:org.bluez"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return CheckResult("BlueZ", False, "the system bus did not answer within 5 s")
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["dbus-send failed"])[-1]
        return CheckResult("BlueZ", False, f"cannot ask the system bus: {reason}")
    if "boolean true" not in proc.stdout:
        return CheckResult("BlueZ", False, "org.bluez is not on the system bus (is bluetoothd running?)")
    # bluetoothd runs happily with no radio: only an object implementing Adapter1 means one exists.
    cmd = ["dbus-send", "--system", "--print-reply", "--reply-timeout=2000", "--dest=org.bluez", "/",
           "org.freedesktop.DBus.ObjectManager.GetManagedObjects"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return CheckResult("BlueZ", False, "bluetoothd did not list its objects within 5 s")
    if proc.returncode != 0 or "org.bluez.Adapter1" not in proc.stdout:
        return CheckResult("BlueZ", False, "bluetoothd runs but reports no Bluetooth adapter")
    return CheckResult("BlueZ", True, "bluetoothd is on the system bus with an adapter")


def check_broker(url: str | None, security: Any, protocol: str, timeout: float = 5.0) -> CheckResult:
    """Connects with the configured credentials and reads the broker's CONNACK."""
    import paho.mqtt.client as mqtt

    from l2mu.agent.mqtt import BrokerAddress

    if url is None:
        return CheckResult("broker", False, "no broker URL configured ([mqtt] url, L2MU_MQTT_URL or --mqtt)")
    address = BrokerAddress.parse(url)
    v5 = protocol == "5"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if security.username:
        client.username_pw_set(security.username, security.password)
    if address.tls:
        client.tls_set(ca_certs=str(security.ca_file) if security.ca_file else None,
                       certfile=str(security.cert_file) if security.cert_file else None,
                       keyfile=str(security.key_file) if security.key_file else None)
    answered = threading.Event()
    outcome: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
        outcome.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    where = f"{address.host}:{address.port}"
    try:
        client.connect(address.host, address.port, keepalive=10)
    except OSError as exc:
        return CheckResult("broker", False, f"cannot reach {where} ({exc.strerror or exc})")
    client.loop_start()
    try:
        if not answered.wait(timeout):
            return CheckResult("broker", False, f"{where} sent no CONNACK within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if outcome[0] != "Success":
        return CheckResult("broker", False, f"{where} refused the connection: {outcome[0]}")
    who = f" as {security.username}" if security.username else ""
    return CheckResult("broker", True, f"{where} accepted the connection{who}")


def check_model(model: str | None, watches: list[str] | None) -> CheckResult:
    """The model loads, and every configured watch delivers the sensors it was trained on."""
    from l2mu.agent.runtime import ExecuTorchClassifier, resolve_model
    from l2mu.agent.sources import parse_source

    try:
        clf = ExecuTorchClassifier(resolve_model(model))
    except Exception as exc:  # any load failure is what this check reports
        return CheckResult("model", False, str(exc))
    needed = list(clf.meta.sensors)
    if not watches:
        return CheckResult("model", False, f"{clf.meta.name} loads, but no watch is configured")
    for spec in watches:
        try:
            source = parse_source(spec, 0)
        except Exception as exc:  # a watch that cannot be opened cannot provide sensors either
            return CheckResult("model", False, f"{clf.meta.name} loads, but {exc}")
        if not source.sensors_known:
            continue  # a live watch says what it streams when it connects (and `run` adapts the model then)
        missing = [s for s in needed if s not in source.sensors]
        if missing:
            return CheckResult("model", False, f"{clf.meta.name} needs {'+'.join(needed)}, {spec} lacks "
                                               f"{'+'.join(missing)}")
    return CheckResult("model", True, f"{clf.meta.name} loads; {len(watches)} watch(es) provide "
                                      f"{'+'.join(needed)}")


def run_checks(options: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> list[CheckResult]:
    from l2mu.agent.mqtt import MqttError, MqttSecurity

    results = [check_dbus(environ), check_bluez()]
    try:
        security = MqttSecurity.from_options(options.get("username"), options.get("password_file"),
                                             options.get("ca_file"), options.get("cert_file"),
                                             options.get("key_file"), environ=environ)
        results.append(check_broker(options.get("mqtt"), security, options.get("mqtt_protocol") or "5"))
    except MqttError as exc:
        results.append(CheckResult("broker", False, str(exc)))
    results.append(check_model(options.get("model"), options.get("watch")))
    return results


def doctor_options(config: Path | None, given: Mapping[str, Any], explicit: set[str],
                   environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    from l2mu.agent.settings import environment_overrides, load_config, merge_options

    names = ["watch", "mqtt", "model", "username", "password_file", "ca_file", "cert_file", "key_file",
             "mqtt_protocol"]
    base = {name: given.get(name) for name in names}
    return merge_options(base, explicit, environment_overrides(environ), load_config(config) if config else {})


@app.command()
@one_line_errors
def doctor(
    config: Annotated[Path | None, typer.Option(help="The `run --config` file to check against.")] = None,
    watch: Annotated[list[str] | None, typer.Option(help="Watches to check (default: the config's).")] = None,
    mqtt: Annotated[str | None, typer.Option(help="Broker URL (default: the config's).")] = None,
    model: Annotated[str | None, typer.Option(help="Model (default: the config's).")] = None,
) -> None:
    """Check D-Bus, BlueZ, the broker (with the configured credentials) and the model; exit 1 if any fails."""
    given = {"watch": watch or None, "mqtt": mqtt, "model": model}
    results = run_checks(doctor_options(config, given, {k for k, v in given.items() if v is not None}))
    for r in results:
        typer.echo(r.line())
    if not all(r.ok for r in results):
        raise typer.Exit(1)
