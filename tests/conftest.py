"""Shared fixtures: golden events and an environment isolated from the machine's."""

import json
import os
import shutil
from pathlib import Path

import pytest

EVENTS = Path(__file__).parent / "events"
REPO = Path(__file__).resolve().parents[1]
# ./dev test installs deploy/requirements-tools.txt (checkov, awscli) into .venv-tools, apart from the
# worker's virtualenv, since both pin their own botocore.
TOOLS_BIN = Path(os.environ.get("DEPLOY_TOOLS_BIN", REPO / ".venv-tools" / "bin"))


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


@pytest.fixture(scope="session")
def deploy_tool():
    """The path of a deploy tool (``aws``, ``checkov``) from .venv-tools, else from PATH."""

    def find(name: str) -> str:
        path = TOOLS_BIN / name
        found = str(path) if path.exists() else shutil.which(name)
        if not found:
            pytest.fail(f"{name} not found in {TOOLS_BIN} or on PATH: run ./dev test, which installs "
                        "deploy/requirements-tools.txt into .venv-tools")
        return found

    return find
