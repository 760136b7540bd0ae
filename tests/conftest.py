"""Shared fixtures: golden events and an environment isolated from the machine's."""

import json
from pathlib import Path

import pytest

EVENTS = Path(__file__).parent / "events"


@pytest.fixture
def golden():
    """Load a golden event file from tests/events/ by stem."""

    def load(name: str) -> dict:
        return json.loads((EVENTS / f"{name}.json").read_text())

    return load


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No test reads the developer's own cloud settings by accident."""
    for name in ("AWS_ROLE_ARN", "ID_TOKEN_AUDIENCE", "REPLY_TOPIC", "ALLOWED_BUCKETS", "AWS_PROFILE",
                 "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
