"""Turning trained checkpoints into on-device programs (ExecuTorch)."""
