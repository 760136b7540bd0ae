"""deploy/terraform read with python-hcl2, and the little of HCL's expression language the checks need
to turn its policy documents into the JSON AWS sees."""

from __future__ import annotations

import re
from pathlib import Path

import hcl2

TERRAFORM = Path(__file__).resolve().parents[2] / "deploy" / "terraform"

# The function's fan-out settings: the names of the team's contract for issue 12 (worker/config.py reads them).
FANOUT_SETTINGS = frozenset({"PARTIALS_BUCKET", "SHARD_TOPIC", "SHARD_DEAD_LETTER_TOPIC", "FIRESTORE_DATABASE",
                             "RUNS_COLLECTION", "FANOUT_MAX_IN_FLIGHT", "RUNS_RETENTION_DAYS"})
# Every resource fan-out adds: none of them exists with fanout_enabled = false.
FANOUT_RESOURCES = frozenset({
    ("google_firestore_database", "runs"), ("google_storage_bucket", "partials"),
    ("google_pubsub_topic", "shards"), ("google_pubsub_topic", "shard_dead_letter"),
    ("google_pubsub_subscription", "shards"), ("google_pubsub_subscription", "shard_dead_letter"),
    ("google_project_iam_member", "worker_uses_runs_database"), ("google_storage_bucket_iam_member", "worker_partials"),
    ("google_pubsub_topic_iam_member", "worker_publishes_shards"),
    ("google_pubsub_topic_iam_member", "pubsub_publishes_shard_dead_letters"),
    ("google_pubsub_subscription_iam_member", "pubsub_acks_dead_lettered_shards"),
    ("google_firestore_field", "expire_at"),
})


def _unquote(value):
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if k not in ("__is_block__", "__comments__")}
    return value


def load() -> dict:
    """Every block of every .tf file (the root module's, then its modules'):
    {"resource": {type: {name: body}}, "data": ..., "variable": {name: body},
    "locals": {...}, "output": {name: body}}; string literals without their quotes."""
    merged: dict = {"resource": {}, "data": {}, "variable": {}, "locals": {}, "output": {}, "terraform": [],
                    "provider": [], "module": {}}
    for path in sorted(TERRAFORM.glob("*.tf")) + sorted(TERRAFORM.glob("modules/*/*.tf")):
        with open(path, encoding="utf-8") as f:
            parsed = _unquote(hcl2.load(f))
        for kind in ("resource", "data"):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    merged[kind].setdefault(type_, {}).update(named)
        in_module = "modules" in path.relative_to(TERRAFORM).parts
        for kind in ("variable", "output"):
            for block in parsed.get(kind, []):
                for name, body in block.items():  # the root module's own win over its modules'
                    merged[kind][name] = merged[kind].get(name, body) if in_module else body
        for block in parsed.get("module", []):
            for name, body in block.items():
                merged["module"].setdefault(name, []).append(body)
        for block in parsed.get("locals", []):
            merged["locals"].update({k: v for k, v in block.items() if not (in_module and k in merged["locals"])})
        merged["terraform"] += parsed.get("terraform", [])
        merged["provider"] += parsed.get("provider", [])
    return merged


_REF = re.compile(r"\$\{([^{}]+)\}")
_FOR = re.compile(r'^\$\{\[for (\w+) in ([\w.]+) : "(.*)"\]\}$')


def evaluate(expr, scope: dict):
    """A value with its references (``${var.x}``, ``${local.y}``, ``[for p in local.z : "…${p}…"]``) taken
    from ``scope``; anything else it meets raises KeyError, so an unexpected expression fails the test."""
    if isinstance(expr, list):
        return [evaluate(e, scope) for e in expr]
    if not isinstance(expr, str):
        return expr
    loop = _FOR.match(expr)
    if loop:
        name, source, template = loop.groups()
        return [_REF.sub(lambda m, item=item: str((scope | {name: item})[m.group(1)]), template)
                for item in scope[source]]
    whole = _REF.fullmatch(expr)
    if whole:
        return scope[whole.group(1)]
    return _REF.sub(lambda m: str(scope[m.group(1)]), expr)


def _one_or_many(values: list):
    return values[0] if len(values) == 1 else values


def policy_json(document: dict, scope: dict) -> dict:
    """The JSON an ``aws_iam_policy_document`` data source renders (one-element lists become strings)."""
    statements = []
    for block in document["statement"]:
        statement: dict = {}
        if "sid" in block:
            statement["Sid"] = block["sid"]
        statement["Effect"] = block.get("effect", "Allow")
        statement["Action"] = _one_or_many(evaluate(block["actions"], scope))
        if "resources" in block:
            statement["Resource"] = _one_or_many(evaluate(block["resources"], scope))
        for principal in block.get("principals", []):
            statement.setdefault("Principal", {})[principal["type"]] = _one_or_many(principal["identifiers"])
        for condition in block.get("condition", []):
            values = _one_or_many(evaluate(condition["values"], scope))
            statement.setdefault("Condition", {}).setdefault(condition["test"], {})[condition["variable"]] = values
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


def simplified(policy: dict) -> dict:
    """A policy with one-element lists as strings: how AWS compares them, and how Terraform renders them."""
    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            items = [walk(v) for v in value]
            return items[0] if len(items) == 1 and not isinstance(items[0], dict) else items
        return value
    return {**walk(policy), "Statement": [walk(s) for s in policy["Statement"]]}
