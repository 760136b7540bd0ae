# Helpers of the deploy scripts (sourced).
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

say() { printf '%s\n' "$*" >&2; }
die() { printf 'deploy: %s\n' "$*" >&2; exit 1; }

need_command() {  # need_command NAME WHAT
  command -v "$1" >/dev/null 2>&1 || die "$1 is missing: install $2"
}

need_var() {  # need_var NAME WHAT
  [[ -n "${!1:-}" ]] || die "$1 is not set: $2 (see deploy/cli/config.env.example)"
}

json_get() {  # json_get JSON KEY: the value at KEY, as compact JSON
  python3 -c 'import json, sys; print(json.dumps(json.loads(sys.argv[1])[sys.argv[2]], separators=(",", ":")))' "$1" "$2"
}

same_json() {  # same_json A B: true when A and B are the same JSON (key order aside)
  python3 -c 'import json, sys; a, b = (json.loads(x) for x in sys.argv[1:]); sys.exit(a != b)' "$1" "$2"
}
