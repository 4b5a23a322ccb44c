"""Helpers for the resampling tests (no tests here): the grid rate."""

from __future__ import annotations

GRID_HZ = 20.0
