"""pytest plugin entry point (pyproject `pytest11`): replays recordings as tests.

Inert until the recording/replay layer registers its hooks here.
"""
from __future__ import annotations
