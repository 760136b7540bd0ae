"""Stand-ins for the ``gcloud`` and ``aws`` commands, so that deploy/cli/deploy.sh runs end to end without a
cloud: each call is appended to a JSON-lines log (with the content of any file it is handed), and the
resources it creates are kept in a small state file, so that a second run finds them and the script's
look-before-you-create logic is exercised.

    python fake_cloud.py gcloud ARGS...     (FAKE_CLOUD_DIR: where calls.jsonl and state.json live)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

UNIQUE_ID = "104729000000000000123"
FUNCTION_URL = "https://parquet-summary-abc123-uc.a.run.app"
ROLE_ARN = "arn:aws:iam::123456789012:role/parquet-summary"
FILE_FLAGS = ("--lifecycle-file", "--env-vars-file")
CALL_FLAGS = {"--project", "--quiet", "--topic", "--expiration-period", "--format"}


class State:
    def __init__(self, folder: Path):
        self.path = folder / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))


def flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def words_of(args: list[str]) -> list[str]:
    """The command words and positional arguments (flags left out)."""
    return [a for a in args if not a.startswith("-")]


def missing(what: str) -> int:
    print(f"ERROR: (gcloud) NOT_FOUND: {what} not found", file=sys.stderr)
    return 1


def gcloud(args: list[str], state: State) -> int:
    words = words_of(args)
    head = tuple(words[:3])
    fmt = flag(args, "--format") or ""
    if words[:2] == ["auth", "list"]:
        print("deployer@example.com")
    elif words[:4] == ["beta", "services", "identity", "create"]:
        service = flag(args, "--service").split(".")[0]
        print(f"service-123456789012@gcp-sa-{service}.iam.gserviceaccount.com")
    elif words[:2] == ["services", "enable"] or {"add-iam-policy-binding", "add-invoker-policy-binding"} & set(words):
        pass
    elif head == ("iam", "service-accounts", "describe"):
        if not state.get(f"account {words[3]}"):
            return missing(words[3])
        if "uniqueId" in fmt:
            print(UNIQUE_ID)
    elif head == ("iam", "service-accounts", "create"):
        state.put(f"account {words[3]}@{flag(args, '--project')}.iam.gserviceaccount.com", True)
    elif words[:2] == ["pubsub", "topics"] or words[:2] == ["pubsub", "subscriptions"]:
        kind, verb, name = words[1], words[2], words[3]
        if verb == "describe":
            if not state.get(f"{kind} {name}"):
                return missing(name)
            print(json.dumps(state.get(f"{kind} {name}")))
        elif verb in ("create", "update"):
            # A subscription's settings: what an update may change (not its topic, nor the flags of the call).
            settings = sorted(a for a in args if a.startswith("--") and a.split("=")[0] not in CALL_FLAGS)
            state.put(f"{kind} {name}", settings if kind == "subscriptions" else True)
        else:
            return unexpected(args)
    elif words[:2] == ["functions", "describe"]:
        deployed = state.get(f"function {words[2]}")
        if deployed is None:
            return missing(words[2])
        print(deployed if "deploy-digest" in fmt else FUNCTION_URL)
    elif words[:2] == ["functions", "deploy"]:
        state.put(f"function {words[2]}", flag(args, "--update-labels").split("=", 1)[1])
    elif words[:2] == ["meta", "list-files-for-upload"]:
        print("main.py")
    elif head == ("firestore", "databases", "describe"):
        database = flag(args, "--database") or "(default)"
        if not state.get(f"database {database}"):
            return missing(database)
        print(state.get(f"database {database}"))
    elif head == ("firestore", "databases", "create"):
        state.put(f"database {flag(args, '--database')}", flag(args, "--type").upper().replace("-", "_"))
    elif words[:4] in (["firestore", "indexes", "fields", "describe"], ["firestore", "indexes", "fields", "update"],
                       ["firestore", "fields", "ttls", "update"]):
        field = f"{flag(args, '--database')}/{flag(args, '--collection-group')}/{words[4]}"
        if words[3] == "describe":  # a field's TTL state (the script asks for nothing else)
            if not state.get(f"ttl {field}"):
                return missing(field)
            print(state.get(f"ttl {field}"))
        elif words[1] == "indexes":
            state.put(f"indexes {field}", "disabled" if "--disable-indexes" in args else "other")
        else:
            state.put(f"ttl {field}", "ACTIVE" if "--enable-ttl" in args else "")
    elif head in (("storage", "buckets", "describe"), ("scheduler", "jobs", "describe")):
        if not state.get(f"{words[1]} {words[3]}"):
            return missing(words[3])
    elif head == ("storage", "buckets", "create") or words[:4] == ["scheduler", "jobs", "create", "pubsub"]:
        state.put(f"{words[1]} {words[-1]}", True)
    elif head == ("storage", "buckets", "update") or words[:4] == ["scheduler", "jobs", "update", "pubsub"]:
        pass
    else:
        return unexpected(args)
    return 0


def aws(args: list[str], state: State) -> int:
    words = words_of(args)
    query = flag(args, "--query") or (args[args.index("--query") + 1] if "--query" in args else "")
    if words[:2] == ["sts", "get-caller-identity"]:
        print(json.dumps({"Account": "123456789012"}))
    elif words[:2] == ["iam", "get-role"]:
        if not state.get("role trust"):
            print("An error occurred (NoSuchEntity) when calling the GetRole operation", file=sys.stderr)
            return 254
        print(ROLE_ARN if query == "Role.Arn" else state.get("role trust"))
    elif words[:2] in (["iam", "create-role"], ["iam", "update-assume-role-policy"]):
        document = args[args.index("--assume-role-policy-document" if words[1] == "create-role" else
                                   "--policy-document") + 1]
        state.put("role trust", document)
    elif words[:2] == ["iam", "get-role-policy"]:
        if not state.get("role policy"):
            return 254
        print(state.get("role policy"))
    elif words[:2] == ["iam", "put-role-policy"]:
        state.put("role policy", args[args.index("--policy-document") + 1])
    else:
        return unexpected(args)
    return 0


def unexpected(args: list[str]) -> int:
    print(f"fake cloud: unexpected command: {args}", file=sys.stderr)
    return 2


def main() -> int:
    tool, args = sys.argv[1], sys.argv[2:]
    folder = Path(os.environ["FAKE_CLOUD_DIR"])
    files = {}
    for name in FILE_FLAGS:
        path = flag(args, name)
        if path:
            files[name] = Path(path).read_text()
    with open(folder / "calls.jsonl", "a", encoding="utf-8") as log:
        log.write(json.dumps({"tool": tool, "args": args, "files": files}) + "\n")
    return (gcloud if tool == "gcloud" else aws)(args, State(folder))


if __name__ == "__main__":
    sys.exit(main())
