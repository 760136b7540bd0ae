"""The docs say what the code does: the configuration table lists exactly the variables worker/config.py reads,
with the defaults Settings has; the job, result, fan-out and error-code tables name exactly the schemas' fields
and codes; the command line's page names every flag; deploy's settings table names what deploy/ sets; and every
relative link leads to a file and a heading that exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import worker.config as config
from worker.cli import build_parser
from worker.config import Settings
from worker.jobs import load_schema

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
# Variables the table describes that config.py reads under another library's name, or only as a fallback.
ALSO_READ = {"AWS_DEFAULT_REGION"}


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _first_column(text: str) -> list[list[str]]:
    """The backticked names in the first cell of each table row (a cell may name several: `a`, `b`)."""
    rows = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        header = i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if line.startswith("| `") and not header:
            cell = line.split("|")[1]
            rows.append(re.findall(r"`([^`]+)`", cell))
    return rows


def _names(text: str) -> set[str]:
    return {name for row in _first_column(text) for name in row}


def _settings_table() -> dict[str, str]:
    """Variable -> its default column, from the configuration page's settings table."""
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \|([^|]*)\|", _section(_page("configuration.md"), "Settings"),
                      flags=re.MULTILINE)
    return {name: default.strip() for name, default in rows}


def _variables_read() -> set[str]:
    return {value for name, value in vars(config).items()
            if name.isupper() and isinstance(value, str) and value == name and not name.startswith("_")}


def test_the_configuration_table_lists_exactly_what_config_reads():
    table = _settings_table()
    assert set(table) - ALSO_READ == _variables_read()
    assert "AWS_DEFAULT_REGION" in Path(config.__file__).read_text()


def test_the_configuration_tables_numeric_defaults_are_the_settings_defaults():
    table = _settings_table()
    defaults = {f.name.upper(): f.default for f in Settings.__dataclass_fields__.values()}
    checked = 0
    for name, shown in table.items():
        if re.fullmatch(r"\d+", shown) and name in defaults:
            assert int(shown) == defaults[name], name
            checked += 1
    assert checked >= 10


def test_the_job_table_names_exactly_the_job_schemas_fields():
    assert _names(_section(_page("jobs-and-results.md"), "The job")) == set(load_schema("job")["properties"])


def test_the_result_table_names_exactly_the_result_schemas_fields():
    schema = load_schema("result")
    section = _section(_page("jobs-and-results.md"), "The result")
    table = section[:section.index("\n\n", section.index("| field |"))]  # the first table only
    assert _names(table) == set(schema["properties"])
    always = {name for row in _first_column(table) for name in row
              if re.search(rf"^\| `{re.escape(row[0])}`.*?\| always \|", table, flags=re.MULTILINE)}
    assert always == set(schema["required"])


def test_the_fanout_table_names_exactly_the_fanout_sections_fields():
    fanout = load_schema("result")["properties"]["fanout"]["properties"]
    assert _names(_section(_page("fan-out.md"), "What the answer says")) == set(fanout)


def test_the_error_code_table_names_exactly_the_schemas_codes():
    codes = load_schema("result")["properties"]["error"]["properties"]["code"]["enum"]
    assert _names(_section(_page("jobs-and-results.md"), "Error codes")) == set(codes)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_the_cli_page_names_every_command_and_flag(command):
    page = _page("cli.md")
    assert f"`{command}" in page, command
    flags = {option for action in _subcommands()[command]._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"}
    missing = sorted(flag for flag in flags if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", page))
    assert not missing, (command, missing)


def test_the_deploy_settings_table_names_what_terraform_sets():
    main_tf = (REPO / "deploy" / "terraform" / "main.tf").read_text(encoding="utf-8")
    block = main_tf[main_tf.index("environment = {"):]
    block = block[:block.index("\n  }\n")]
    set_by_terraform = set(re.findall(r"^\s+([A-Z_]+)\s+=", block, flags=re.MULTILINE))
    plan = (REPO / "deploy" / "terraform" / "modules" / "plan" / "main.tf").read_text(encoding="utf-8")
    set_by_terraform |= set(re.findall(r"^\s+([A-Z_]+)\s+=", plan[plan.index("fanout_environment"):],
                                       flags=re.MULTILINE)) & _variables_read()
    table = _names(_section(_page("deploy.md"), "The function's settings"))
    assert len(set_by_terraform) >= 10
    assert set_by_terraform <= table, sorted(set_by_terraform - table)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def _links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [target for target in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    links = _links(page)
    for target in links:
        file, _, anchor = target.partition("#")
        destination = (page.parent / file).resolve() if file else page
        assert destination.exists(), f"{page.name}: {target}"
        if anchor:
            assert anchor in _anchors(destination), f"{page.name}: {target}"


def test_the_slug_rule_matches_githubs_on_the_headings_used():
    assert _slug("The function's settings") == "the-functions-settings"
    assert _slug("Bursts: sizing so that no job is dead-lettered unrun") == (
        "bursts-sizing-so-that-no-job-is-dead-lettered-unrun")
    assert _slug("A worked estimate: 1,000,000 objects, 10 TB, on Cloud Run") == (
        "a-worked-estimate-1000000-objects-10-tb-on-cloud-run")


def test_the_readme_first_page_stays_short_and_links_every_docs_page():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 160
    for page in DOCS.glob("*.md"):
        assert f"(docs/{page.name})" in readme, page.name
