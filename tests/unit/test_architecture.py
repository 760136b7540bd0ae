"""The direction of imports: the pure core imports no cloud library and touches no process-wide state, and
nothing imports main.py."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLOUD = {"boto3", "botocore", "google", "awswrangler", "functions_framework", "flask"}
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
# Every module that claims to be pure (its docstring says so), the fan-out's decisions and records, and what
# they import from the worker: none may import a cloud library or change the process it runs in.
PURE = ("profile", "claims", "templates", "summary", "jobs", "results", "values", "footer", "fanout.ranges",
        "fanout.records", "fanout.decisions", "partials", "policies", "errors", "retention")
# Process-wide state a pure module must leave alone: Arrow's memory pool, the C library, the environment.
PROCESS_WIDE_CALLS = {"set_memory_pool", "mallopt", "putenv", "unsetenv", "setrecursionlimit"}
ENVIRON_WRITES = {"update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__"}


def _tree(name: str) -> ast.Module:
    return ast.parse((REPO / "worker" / f"{name.replace('.', '/')}.py").read_text(encoding="utf-8"))


def _imported(tree: ast.Module) -> list[str]:
    """Every module an import statement names, at the top or inside a function (lazy imports included)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _is_environ(node: ast.AST) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ")


def _process_wide(tree: ast.Module) -> list[str]:
    """What in a module's code changes the whole process: ctypes, the named calls, writes to os.environ."""
    found: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Attribute) and node.attr in PROCESS_WIDE_CALLS:
            found.append(f"line {line}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in PROCESS_WIDE_CALLS:
            found.append(f"line {line}: {node.id}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            if any(isinstance(t, ast.Subscript) and _is_environ(t.value) for t in targets):
                found.append(f"line {line}: os.environ[...] written")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ENVIRON_WRITES and _is_environ(node.func.value)):
            found.append(f"line {line}: os.environ.{node.func.attr}()")
    found += [f"imports {name}" for name in _imported(tree) if name.split(".")[0] == "ctypes"]
    return found


@pytest.mark.parametrize("module", ["worker.summary", "worker.jobs", "worker.results", "worker.errors",
                                    "worker.config", "worker.service", "worker.policies",
                                    "worker.fanout.coordinator"])
def test_core_imports_without_cloud_libraries(module):
    run = subprocess.run([sys.executable, "-c", BLOCKER, module], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("name", PURE)
def test_a_pure_module_imports_without_cloud_libraries(name):
    run = subprocess.run([sys.executable, "-c", BLOCKER, f"worker.{name}"], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("name", PURE)
def test_a_pure_module_names_no_cloud_library_and_only_pure_worker_modules(name):
    """Static, so lazy imports inside functions count too (the subprocess above only runs the top level)."""
    imported = _imported(_tree(name))
    assert [m for m in imported if m.split(".")[0] in CLOUD] == []
    worker_modules = {m for m in imported if m == "worker" or m.startswith("worker.")}
    assert worker_modules <= {"worker"} | {f"worker.{p}" for p in PURE}, worker_modules


@pytest.mark.parametrize("name", PURE)
def test_a_pure_module_touches_no_process_wide_state(name):
    assert _process_wide(_tree(name)) == []


def test_every_module_that_says_it_is_pure_is_checked():
    claims = set()
    for path in (REPO / "worker").rglob("*.py"):
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if re.search(r"(^|[.\n]\s*)Pure\b", docstring):
            claims.add(".".join(path.relative_to(REPO / "worker").with_suffix("").parts))
    assert claims and claims <= set(PURE), claims - set(PURE)


def test_the_process_wide_check_sees_what_it_looks_for():
    tree = ast.parse("import ctypes\nimport os\nimport pyarrow as pa\npa.set_memory_pool(pa.system_memory_pool())\n"
                     "ctypes.CDLL('libc.so.6').mallopt(-8, 2)\nos.environ['X'] = '1'\nos.environ.setdefault('Y', '')\n")
    assert len(_process_wide(tree)) == 5


FULL_MODE_LEAVES_THE_POOL = BLOCKER.replace("importlib.import_module(sys.argv[1])", """
import io
import pyarrow as pa
import pyarrow.parquet as pq
from worker.profile import profile_object
before = pa.default_memory_pool().backend_name
buf = io.BytesIO()
pq.write_table(pa.table({"v": list(range(1000))}), buf)
data = buf.getvalue()
out = profile_object("t.parquet", len(data), lambda a, b: data[a:b + 1]).to_dict()
assert out["profile"]["v"]["count"] == 1000, out
assert pa.default_memory_pool().backend_name == before, (before, pa.default_memory_pool().backend_name)
""")


def test_full_mode_leaves_the_memory_pool_to_the_edge():
    run = subprocess.run([sys.executable, "-c", FULL_MODE_LEAVES_THE_POOL], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


EDGES_BOUND_THE_ALLOCATORS = """
import sys
import pyarrow as pa
from worker import app, cli
from worker.config import Settings
from tests.unit.support import MemoryStore

class Storage:
    def ensure_credentials(self):
        pass

    def objects(self, bucket, job_id):
        return MemoryStore({})

if sys.argv[1] == "function":
    app.build_worker = lambda settings: object()
    app.get_worker(Settings(role_arn="", audience=""))
else:
    app.build_storage = lambda settings: Storage()
    assert cli.main(["summarize", "s3://b-1/p/"]) == 1  # not_found: nothing under the prefix
assert pa.default_memory_pool().backend_name == "system", pa.default_memory_pool().backend_name
"""


@pytest.mark.parametrize("edge", ["function", "cli"])
def test_the_function_and_the_cli_bound_allocator_retention_where_they_start(edge):
    run = subprocess.run([sys.executable, "-c", EDGES_BOUND_THE_ALLOCATORS, edge], cwd=REPO, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_nothing_imports_main():
    pattern = re.compile(r"^\s*(import main\b|from main import)", re.MULTILINE)
    offenders = [str(p.relative_to(REPO)) for p in [*REPO.glob("worker/**/*.py"), *REPO.glob("tests/**/*.py")]
                 if pattern.search(p.read_text())]
    assert offenders == []


# -- what the function ships ----------------------------------------------------------------------------------

# Folders of worker/ that never ship: the local stack, and the operator's command-line tooling.
NOT_SHIPPED = {"worker/devstack", "worker/tools"}
# The one shipped module that may import them, inside its functions: the command line (`python -m worker`), which
# the function never loads (see the closure test below).
LAZY_TOOLING_IMPORTERS = {"worker/cli.py"}


def _excluded_by_gcloudignore() -> set[str]:
    lines = (REPO / ".gcloudignore").read_text(encoding="utf-8").splitlines()
    return {line.strip("/") for line in lines if line.startswith("/worker/") and line.endswith("/")}


def _excluded_by_the_plan_module() -> set[str]:
    text = (REPO / "deploy" / "terraform" / "modules" / "plan" / "main.tf").read_text(encoding="utf-8")
    (block,) = re.findall(r"^\s*excluded\s*=\s*setunion\((.*?)^\s*\)", text, re.MULTILINE | re.DOTALL)
    return set(re.findall(r'fileset\(var\.source_dir, "(worker/[\w/]+)/\*\*"\)', block))


def _shipped_python() -> list[Path]:
    excluded = _excluded_by_gcloudignore()
    worker = [p for p in (REPO / "worker").rglob("*.py")
              if not any(p.relative_to(REPO).as_posix().startswith(f"{folder}/") for folder in excluded)]
    return [REPO / "main.py", *sorted(worker)]


def _module_file(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _module_of(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_of(path: Path, source: str | None = None) -> list[tuple[str, bool]]:
    """Every module an import in ``path`` (or ``source`` as if it were there) names (relative ones resolved,
    ``from pkg import submodule`` as the submodule too), each with whether it runs when the module loads (False:
    inside a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    package = _module_of(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, at_load: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend((alias.name, at_load) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            found.append((base, at_load))
            found.extend((f"{base}.{alias.name}", at_load) for alias in node.names
                         if _module_file(f"{base}.{alias.name}") is not None)
        for child in ast.iter_child_nodes(node):
            visit(child, at_load and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    return found


def _is_tooling(module: str) -> bool:
    return any(module == m or module.startswith(f"{m}.") for m in ("worker.devstack", "worker.tools"))


def test_both_upload_lists_leave_out_the_local_stack_and_the_tooling():
    assert _excluded_by_gcloudignore() == _excluded_by_the_plan_module()
    assert _excluded_by_gcloudignore() >= NOT_SHIPPED
    assert all((REPO / folder / "__init__.py").is_file() for folder in NOT_SHIPPED)


def test_nothing_shipped_loads_the_local_stack_or_the_tooling():
    shipped = _shipped_python()
    assert REPO / "worker" / "adapters" / "pubsub.py" in shipped
    assert not [p for p in shipped if p.relative_to(REPO).as_posix().startswith(tuple(f"{f}/" for f in NOT_SHIPPED))]
    at_load = [f"{p.relative_to(REPO)}: {m}" for p in shipped for m, load in _imports_of(p) if load and _is_tooling(m)]
    assert at_load == []
    lazy = {p.relative_to(REPO).as_posix() for p in shipped for m, _ in _imports_of(p) if _is_tooling(m)}
    assert lazy <= LAZY_TOOLING_IMPORTERS, lazy - LAZY_TOOLING_IMPORTERS


def test_the_function_never_reaches_the_command_line_or_the_tooling():
    """Every worker module main.py can import, lazy imports included: none is tooling, nor the command line that
    may import it."""
    reached: set[str] = set()
    todo = [REPO / "main.py"]
    while todo:
        path = todo.pop()
        for module, _ in _imports_of(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
                name = ".".join(parts[:i])
                target = _module_file(name) if parts[0] == "worker" else None
                if target is not None and name not in reached:
                    reached.add(name)
                    todo.append(target)
    assert {"worker.app", "worker.service", "worker.adapters.pubsub"} <= reached
    assert [m for m in reached if _is_tooling(m) or m in {"worker.cli", "worker.__main__"}] == []


def test_the_import_scan_sees_lazy_and_relative_imports():
    source = ("from worker.tools import pubsub\nfrom . import aws\nclass C:\n    import json\n"
              "def f():\n    from ..devstack import stack\n    g = lambda: __import__('x')\n")
    scanned = _imports_of(REPO / "worker" / "adapters" / "pubsub.py", source)
    assert ("worker.tools", True) in scanned and ("worker.tools.pubsub", True) in scanned
    assert ("worker.adapters.aws", True) in scanned and ("json", True) in scanned
    assert ("worker.devstack", False) in scanned and ("worker.devstack.stack", False) in scanned
