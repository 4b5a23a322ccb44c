"""`l2mu-agent run`: the agent, from the command line, the environment and the config file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from l2mu.agent.cli.app import app, one_line_errors
from l2mu.agent.cli.ble import RetryBudgetOpt, ScanTimeoutOpt
from l2mu.agent.errors import ConfigError
from l2mu.agent.settings import DEFAULTS, Settings


@app.command()
@one_line_errors
def run(
    ctx: typer.Context,
    watch: Annotated[
        list[str] | None, typer.Option(help="BLE address, 'demo' or 'replay:FILE'; repeat for several watches. "
                                             "Default: the config file's `watches`.")
    ] = None,
    protocol: Annotated[
        list[str] | None, typer.Option(help="Protocol of the Bluetooth watches: auto, polar, infinitime, metawear, "
                                            "bangle or l2mu; once for all, or once per address in --watch order.")
    ] = None,
    scan_timeout: ScanTimeoutOpt = DEFAULTS.scan_timeout,
    retry_budget: RetryBudgetOpt = DEFAULTS.retry_budget,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with defaults for these options (see systemd/config.example.toml)."
                                       " Command-line options and L2MU_* variables override it.")
    ] = None,
    mqtt: Annotated[
        str | None, typer.Option(help="Broker URL (mqtt://host:port or mqtts://host:port). Default: start a "
                                      "local broker.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Bundled model name or path to a .pte.")] = None,
    speed: Annotated[float, typer.Option(help="Replay speed factor (0 = as fast as possible).")] = DEFAULTS.speed,
    agent_id: Annotated[str | None, typer.Option(help="Id in har/status/<agent_id> (default: hostname).")] = None,
    topic_prefix: Annotated[str, typer.Option(help="First topic level.")] = DEFAULTS.topic_prefix,
    decision_period: Annotated[float, typer.Option(help="Seconds between decisions.", min=0.05)] \
        = DEFAULTS.decision_period,
    echo: Annotated[
        bool | None, typer.Option(help="Print each message received on <prefix>/activity/#. Default: on "
                                        "when the agent starts its own broker.")
    ] = None,
    broker: Annotated[str, typer.Option(help="Local broker when --mqtt is not given: auto, mosquitto, amqtt.")]
    = DEFAULTS.broker,
    smoothing: Annotated[
        str, typer.Option(help="How the published activity is smoothed: majority (vote over the last N "
                               "windows), hmm (forward filter) or none (each window's argmax).")
    ] = DEFAULTS.smoothing,
    smoothing_window: Annotated[int, typer.Option(help="N: windows of evidence a change needs.", min=1)] \
        = DEFAULTS.smoothing_window,
    raw_scores: Annotated[
        bool, typer.Option("--raw-scores", help="Also publish each window's scores on <prefix>/scores/<watch>.")
    ] = DEFAULTS.raw_scores,
    ha_discovery: Annotated[
        bool, typer.Option("--ha-discovery", help="Publish Home Assistant MQTT discovery configs.")
    ] = DEFAULTS.ha_discovery,
    ha_prefix: Annotated[str, typer.Option(help="Home Assistant discovery prefix.")] = DEFAULTS.ha_prefix,
    queue_dir: Annotated[
        Path | None, typer.Option(help="Keep undelivered decisions in this directory, so a restart loses none.")
    ] = None,
    queue_size: Annotated[
        int, typer.Option(help="Most undelivered decisions kept; beyond it the oldest are dropped.", min=1)
    ] = DEFAULTS.queue_size,
    username: Annotated[
        str | None, typer.Option(help="MQTT user name (default: $L2MU_MQTT_USERNAME).")
    ] = None,
    password_file: Annotated[
        Path | None, typer.Option(help="File whose first line is the MQTT password (default: $L2MU_MQTT_PASSWORD).")
    ] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA certificate(s) to verify an mqtts:// broker.")] = None,
    cert_file: Annotated[Path | None, typer.Option(help="Client certificate for mqtts:// (PEM).")] = None,
    key_file: Annotated[Path | None, typer.Option(help="Private key of --cert-file (PEM).")] = None,
    mqtt_protocol: Annotated[
        str | None, typer.Option(help="5 or 3.1.1 (default: 5; 3.1.1 for the embedded amqtt broker).")
    ] = None,
) -> None:
    """Recognise activities from watches (or recordings) and publish them over MQTT."""
    from l2mu.agent.compose import serve

    serve(Settings.from_options(run_options(ctx, config)))


def run_options(ctx: typer.Context, config: Path | None) -> dict[str, Any]:
    """`run`'s parameters after the environment overrides and the config file have filled in what was not given."""
    import os

    from l2mu.agent.settings import environment_overrides, load_config, merge_options

    given = {name: value for name, value in ctx.params.items() if name != "config"}
    # By name: typer ships its own copy of click, so click.core.ParameterSource is a different enum.
    explicit = {name for name in given if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    options = merge_options(given, explicit, environment_overrides(os.environ), load_config(config) if config else {})
    if not options["watch"]:
        raise ConfigError("no watch given: use --watch, L2MU_WATCHES or `watches` in the --config file")
    return options
