"""Shared by the tests split out of test_loadbench.py (no tests here)."""

from __future__ import annotations

import asyncio

from l2mu.agent.intake import NotificationSource


def drain(source: NotificationSource) -> list:
    async def take() -> list:
        source.close()
        return [item async for item in source.stream()]

    return asyncio.run(take())
