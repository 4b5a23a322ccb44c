"""Helpers shared by the tests; pytest collects nothing here (no test_ names)."""
