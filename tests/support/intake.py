"""Helpers for the intake and simulated-watch tests (no tests here): drain an intake of what it queued."""

from __future__ import annotations

import asyncio

from l2mu.agent.intake import NotificationSource


def drain(source: NotificationSource) -> list:
    async def take() -> list:
        source.close()
        return [item async for item in source.stream()]

    return asyncio.run(take())
