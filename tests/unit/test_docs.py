"""The README says what the code does: its configuration table lists exactly the variables worker/config.py
reads, with the defaults Settings has; the job schema's fields are the ones the README's job section names."""

from __future__ import annotations

import re
from pathlib import Path

import worker.config as config
from worker.config import Settings
from worker.jobs import load_schema

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# Variables the table describes that config.py reads under another library's name, or only as a fallback.
ALSO_READ = {"AWS_DEFAULT_REGION"}


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def _table(title: str) -> dict[str, str]:
    """First column (a `NAME`) -> second column, of the tables in one README section."""
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|([^|]*)\|", _section(title), flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def _variables_read() -> set[str]:
    return {value for name, value in vars(config).items()
            if name.isupper() and isinstance(value, str) and value == name and not name.startswith("_")}


def test_the_configuration_table_lists_exactly_what_config_reads():
    table = _table("Configuration")
    assert set(table) - ALSO_READ == _variables_read()
    assert "AWS_DEFAULT_REGION" in Path(config.__file__).read_text()


def test_the_configuration_tables_numeric_defaults_are_the_settings_defaults():
    table = _table("Configuration")
    defaults = {f.name.upper(): f.default for f in Settings.__dataclass_fields__.values()}
    checked = 0
    for name, shown in table.items():
        if re.fullmatch(r"\d+", shown) and name in defaults:
            assert int(shown) == defaults[name], name
            checked += 1
    assert checked >= 10


def test_every_job_field_is_named_in_the_readme():
    for name in load_schema("job")["properties"]:
        assert f"`{name}`" in README, name
