"""Shared fixtures: real services as session fixtures, backends as parameters (see tests/fixtures)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.broker",
    "tests.fixtures.ingest",
    "tests.fixtures.model",
    "tests.fixtures.scoring",
    "tests.fixtures.training",
    "tests.fixtures.history",
    "tests.fixtures.proxy",
]
