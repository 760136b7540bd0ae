"""The direction of imports: the pure core imports no cloud library, and nothing imports main.py."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"boto3", "botocore", "google", "awswrangler", "functions_framework", "flask"}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import importlib
importlib.import_module(sys.argv[1])
"""


@pytest.mark.parametrize("module", ["worker.summary", "worker.jobs", "worker.results", "worker.errors",
                                    "worker.config", "worker.service", "worker.policies"])
def test_core_imports_without_cloud_libraries(module):
    run = subprocess.run([sys.executable, "-c", BLOCKER, module], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_nothing_imports_main():
    pattern = re.compile(r"^\s*(import main\b|from main import)", re.MULTILINE)
    offenders = [str(p.relative_to(REPO)) for p in [*REPO.glob("worker/**/*.py"), *REPO.glob("tests/**/*.py")]
                 if pattern.search(p.read_text())]
    assert offenders == []
