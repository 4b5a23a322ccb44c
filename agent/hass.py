"""Home Assistant MQTT discovery: one `sensor` entity per watch, whose state is the published activity.

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


def discovery_messages(discovery_prefix: str, activity_topic: str, status_topic: str, agent_id: str,
                       watch_id: str, model: str, class_names: list[str]) -> tuple[str, str]:
    """(config topic, JSON payload) for one watch's activity sensor."""
    uid = unique_id(agent_id, watch_id)
    config = {
        "name": "Activity",
        "unique_id": uid,
        "state_topic": activity_topic,
        "value_template": "{{ value_json.activity }}",
        # The whole decision (confidence, raw_activity, scores, seq, …) becomes the entity's attributes.
        "json_attributes_topic": activity_topic,
        "availability_topic": status_topic,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device_class": "enum",
        "options": list(class_names),
        "icon": "mdi:hand-back-right",
        "qos": 1,
        "device": {
            "identifiers": [topic_safe(f"l2mu_{agent_id}_{watch_id}")],
            "name": f"Watch {watch_id}",
            "manufacturer": "l2mu-agent",
            "model": model,
            "sw_version": _version(),
        },
        "origin": {"name": "l2mu-agent", "sw_version": _version()},
    }
    return f"{discovery_prefix}/sensor/{uid}/config", json.dumps(config)
