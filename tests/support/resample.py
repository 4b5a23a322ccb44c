"""Shared by the tests split out of test_resample.py (no tests here)."""

from __future__ import annotations

GRID_HZ = 20.0
