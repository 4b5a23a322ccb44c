"""Home Assistant MQTT discovery: per watch, an activity `sensor` (the published activity), a battery `sensor`
and a connectivity `binary_sensor` (ON while streaming), both read off <prefix>/watch/<watch>/state.
Every entity's availability is the agent's status topic, so all of them go unavailable with the agent's will.

Home Assistant reads retained configs under <discovery_prefix>/sensor/<unique_id>/config; it
announces its own restarts with `online` on <discovery_prefix>/status, after which the agent
publishes them again (a broker without persistence would have forgotten them).
"""

from __future__ import annotations

import json
from importlib import metadata

from l2mu.agent.sources import topic_safe


def _version() -> str:
    try:
        return metadata.version("l2mu-agent")
    except metadata.PackageNotFoundError:
        return "0"


def unique_id(agent_id: str, watch_id: str) -> str:
    return topic_safe(f"l2mu_{agent_id}_{watch_id}_activity")


def _device(agent_id: str, watch_id: str, model: str) -> dict:
    return {
        "identifiers": [topic_safe(f"l2mu_{agent_id}_{watch_id}")],
        "name": f"Watch {watch_id}",
        "manufacturer": "l2mu-agent",
        "model": model,
        "sw_version": _version(),
    }


def _entity(topic: str, status_topic: str, agent_id: str, watch_id: str, model: str) -> dict:
    """What every entity of one watch shares: it reads `topic` (its JSON also its attributes) and is available
    while the agent's status topic says online."""
    return {
        "state_topic": topic,
        "json_attributes_topic": topic,
        "availability_topic": status_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "device": _device(agent_id, watch_id, model),
        "origin": {"name": "l2mu-agent", "sw_version": _version()},
    }


def watch_state_discovery(discovery_prefix: str, state_topic: str, status_topic: str, agent_id: str,
                          watch_id: str, model: str) -> list[tuple[str, str]]:
    """(config topic, JSON payload) for one watch's battery sensor and connectivity binary sensor."""
    # Attributes: state, since, reason, rssi, rate_hz, dropped_frames.
    common = {**_entity(state_topic, status_topic, agent_id, watch_id, model), "entity_category": "diagnostic"}
    battery_uid = topic_safe(f"l2mu_{agent_id}_{watch_id}_battery")
    battery = {
        "name": "Battery", "unique_id": battery_uid, **common,
        # null (no battery level known) renders as None, which Home Assistant shows as unknown
        "value_template": "{{ value_json.battery }}",
        "device_class": "battery", "unit_of_measurement": "%", "state_class": "measurement",
    }
    connected_uid = topic_safe(f"l2mu_{agent_id}_{watch_id}_connected")
    connected = {
        "name": "Connected", "unique_id": connected_uid, **common,
        "value_template": "{{ 'ON' if value_json.state == 'streaming' else 'OFF' }}",
        "payload_on": "ON", "payload_off": "OFF", "device_class": "connectivity",
    }
    return [(f"{discovery_prefix}/sensor/{battery_uid}/config", json.dumps(battery)),
            (f"{discovery_prefix}/binary_sensor/{connected_uid}/config", json.dumps(connected))]


def discovery_messages(discovery_prefix: str, activity_topic: str, status_topic: str, agent_id: str,
                       watch_id: str, model: str, class_names: list[str]) -> tuple[str, str]:
    """(config topic, JSON payload) for one watch's activity sensor."""
    uid = unique_id(agent_id, watch_id)
    # The whole decision (confidence, raw_activity, scores, seq, …) becomes the entity's attributes.
    config = {
        "name": "Activity",
        "unique_id": uid,
        **_entity(activity_topic, status_topic, agent_id, watch_id, model),
        "value_template": "{{ value_json.activity }}",
        "device_class": "enum",
        "options": list(class_names),
        "icon": "mdi:hand-back-right",
    }
    return f"{discovery_prefix}/sensor/{uid}/config", json.dumps(config)
