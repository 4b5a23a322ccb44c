"""The agent: CLI, sources, signal pipeline, runtime, MQTT."""
