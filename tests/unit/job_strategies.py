"""Hypothesis strategies for jobs: valid ones (every field of schemas/job.schema.json, fan_out included),
small mutations of them that make them invalid in one named field, and date templates.

Random JSON is almost never a valid job (the bucket pattern and the prefix/prefix_template rule see to
that), so a property test fed only random input never reaches the code that accepts a job; these
strategies build the valid case and its near misses on purpose.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

# -- date templates ------------------------------------------------------------------------------------

DIRECTIVES = "YymdHMSjUWVGuw%"  # worker.templates.DIRECTIVES, spelled out: the test is not the code
literal_text = st.text(st.characters(codec="utf-8", exclude_characters="{}%\x7f", min_codepoint=0x20), max_size=10)
offsets = st.builds(lambda sign, count, unit: f"{sign}{count}{unit}", st.sampled_from("+-"),
                    st.integers(0, 9999), st.sampled_from(["w", "d", "h", "mo"]))
formats = st.lists(st.sampled_from(DIRECTIVES).map("%".__add__) | st.sampled_from(["-", "/", "T", "=", "x"]),
                   min_size=1, max_size=6).map("".join)
placeholders = st.builds(lambda offset, fmt: "{date" + offset + (f":{fmt}" if fmt else "") + "}",
                         st.just("") | offsets, st.just("") | formats)
# Near misses: what a typo makes of a placeholder; each one is refused, never a literal key.
BAD_PLACEHOLDERS = [
    "{", "}", "{dat}", "{Date}", "{date-1x}", "{date+1}", "{date-12345d}", "{date:%Q}", "{date:%}", "{date:}",
    "{date:%Y-%b}", "{ date}", "{date }", "{{date}", "{date}}", "{date-1d:%Y-%m-%d", "{now}", "{date:%c}"]
bad_placeholders = st.sampled_from(BAD_PLACEHOLDERS)
_pieces = st.lists(literal_text | placeholders | st.sampled_from(["{{", "}}", "%"]), max_size=3)


def _inserted(at: int, piece: str, pieces: list[str]) -> str:
    return "".join([*pieces[:at], piece, *pieces[at:]])


valid_templates = st.builds(_inserted, st.integers(0, 3), placeholders, _pieces)  # at least one placeholder
near_miss_templates = st.builds(_inserted, st.integers(0, 3), bad_placeholders, _pieces)  # and one typo

# -- valid jobs ----------------------------------------------------------------------------------------

# (text over an alphabet rather than from_regex: the same values, drawn about twice as fast)
_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_label = st.builds(str.__add__, st.sampled_from(_LOWER),  # starts and ends with a letter or digit
                   st.just("") | st.builds(str.__add__, st.text(_LOWER + "-", max_size=10), st.sampled_from(_LOWER)))


def _is_ip(name: str) -> bool:
    """Four dot-separated numbers, leading zeros or not: the schema refuses them all."""
    return re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+", name) is not None


buckets = (st.sampled_from(["abc", "my-bucket", "a.b-c", "logs.example.com", "0ab", "a" * 63])
           | st.lists(_label, min_size=1, max_size=4).map(".".join).map(lambda b: b.ljust(3, "0"))  # 3 to 51 long
           .filter(lambda b: not b.startswith("xn--") and not _is_ip(b)))
_CONTROL = "".join(map(chr, range(0x20))) + "\x7f"
prefixes = (st.sampled_from(["", "data/2024/", "events/dt=2026-11-28/", "🙂/", "a b/c", "a" * 1024, "\u2028", "%"])
            | st.text(st.characters(codec="utf-8", exclude_characters=_CONTROL), max_size=40))
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + _LOWER
ids = st.text(_ALNUM + "._:@/+=-", min_size=1, max_size=128)
TIME_ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe", "Pacific/Chatham",
              "Etc/GMT+12", "Etc/GMT-14", "America/St_Johns", "Asia/Kathmandu"]


def _rfc3339(at: datetime, quarters: int, style: str) -> str:
    text = at.replace(tzinfo=timezone(timedelta(minutes=15 * quarters))).isoformat(sep=" " if style == " " else "T")
    return text.replace("+00:00", "Z") if style == "Z" else text


reference_times = st.builds(_rfc3339, st.datetimes(datetime(1900, 1, 1), datetime(2100, 12, 31)),
                            st.integers(-23 * 4, 23 * 4), st.sampled_from(["Z", "T", " "]))
columns = st.lists(st.text(min_size=1, max_size=20) | st.sampled_from(["id", "a.b", "é", "\x00", "a" * 1024]),
                   min_size=1, max_size=5, unique=True)
fan_outs = st.fixed_dictionaries({}, optional={
    "mode": st.sampled_from(["auto", "always", "never"]), "max_in_flight": st.integers(1, 1000),
    "tolerated_failure_percent": st.integers(0, 100) | st.floats(0, 100)})
reply_topics = st.builds(lambda project, first, rest: f"projects/{project}/topics/{first}{rest}",
                         st.text(_LOWER + "-", min_size=1, max_size=20), st.sampled_from(_ALNUM[:26] + _LOWER[:26]),
                         st.text(_ALNUM + "._~%+-", min_size=2, max_size=30))
RESERVED = ("job_id", "status", "correlation_id", "source_message_id", "error_code")
reply_attributes = st.dictionaries(
    st.text(_ALNUM + "_.:-", min_size=1, max_size=20).filter(lambda k: not k.startswith("goog") and k not in RESERVED),
    st.text(max_size=40) | st.just("é" * 512), max_size=3)


# The choices that decide which case an example is come first: drawn after a long valid job, a sampled_from
# came out at its first of 18 elements in 258 of 500 examples (drawn first: 49, near a uniform share).

@st.composite
def valid_jobs(draw, bucket=buckets) -> dict:
    """A job the schema accepts, with any of its optional fields; exactly one of prefix and prefix_template."""
    plain = draw(st.booleans())
    job = draw(st.fixed_dictionaries({"bucket": bucket}, optional={
        "job_id": ids, "mode": st.sampled_from(["metadata", "full"]), "columns": columns, "fan_out": fan_outs,
        "correlation_id": ids, "reply_topic": reply_topics, "reply_attributes": reply_attributes}))
    if plain:
        job["prefix"] = draw(prefixes)
    else:  # time_zone and reference_time only with a template: beside a plain prefix they are refused
        job["prefix_template"] = draw(valid_templates)
        job.update(draw(st.fixed_dictionaries({}, optional={
            "time_zone": st.sampled_from(TIME_ZONES), "reference_time": reference_times})))
    return job


# -- small mutations -----------------------------------------------------------------------------------
# One field of a valid job made bad; every other field stays valid, so the job's problems must name that one.


def _set(field):
    def change(job, value):
        job[field] = value
    return change


def _given(field, value, change):
    """The mutation needs the job's prefix given as ``field`` (``prefix`` or ``prefix_template``): a job that has
    the other gets ``field`` set to ``value`` instead, then the change."""
    def with_field(job, bad):
        if field not in job:
            job.pop("prefix", None)
            job.pop("prefix_template", None)
            job[field] = value
        change(job, bad)
    return with_field


def _templated(change):
    """The mutation needs a prefix_template (time_zone and reference_time count only with one)."""
    return _given("prefix_template", "{date}/", change)


def _plain(change):
    """The mutation needs a plain prefix: time_zone or reference_time beside one is the mistake."""
    return _given("prefix", "data/", change)


def _instead_of_prefix(field):
    """Replace prefix/prefix_template by ``field`` set to a bad value."""
    def change(job, value):
        job.pop("prefix", None)
        job.pop("prefix_template", None)
        job[field] = value
    return change


def _drop(job, fields):
    for field in fields:
        job.pop(field, None)


def _both(job, _):
    job["prefix"] = job.get("prefix", "data/")
    job["prefix_template"] = job.get("prefix_template", "{date}/")


def _fan_out(job, change):
    job["fan_out"] = {**job.get("fan_out", {}), **change} if isinstance(change, dict) else change


def _lone_surrogate(job, i):
    fields = sorted(k for k, v in job.items() if isinstance(v, str))  # bucket at least
    field = fields[i % len(fields)]
    job[field] = job[field][:5] + "\ud800" + job[field][5:]
    return field


def _unknown_field(job, field):
    job[field] = None
    return field


# Not a value with a trailing newline: the schema's patterns end in $, which Python's re (and so jsonschema) also
# matches just before a final "\n", so "x\n" is accepted today (see test_a_trailing_newline_is_refused).
_BAD_IDS = ["", " ", "a b", "é", "a" * 129, "x\x00", "x\ny", 7, None]
_NOTHING = st.nothing()
# (the field the problem names, bad values listed, more bad values, how to put one in a job); each listed value is
# also tried every run (listed_mutations), the strategy mixes them into random valid jobs (mutated_jobs).
MUTATIONS = [
    ("bucket", [["bucket"]], _NOTHING, _drop),
    ("bucket", ["ab", "a" * 64, "My-Bucket", "xn--abc", "192.168.1.1", "a..b", "a.-b", "a-.b", "-abc", "abc-", "a_b",
                "", "bücket", 5, ["abc"]], st.integers(), _set("bucket")),
    ("prefix", [["prefix", "prefix_template"]], _NOTHING, _drop),
    ("prefix", [None], _NOTHING, _both),
    ("prefix", ["a\x00b", "\x1f", "x\x7f", "a" * 1025, "line\nbreak", 5, None, ["a"]], st.integers(),
     _instead_of_prefix("prefix")),
    ("prefix_template", [f"data/{bad}/" for bad in BAD_PLACEHOLDERS] + ["{date:" + "%Y" * 300 + "}"],  # 1,200 long
     _NOTHING, _instead_of_prefix("prefix_template")),
    ("reference_time", ["2026-11-28", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
                        "2026-11-28T25:00:00Z", "2026-11-28T03:00:00", "2026-11-28T03:00:00.1234567890Z", 20261128],
     st.integers(), _templated(_set("reference_time"))),
    ("reference_time", ["2026-11-28T03:00:00Z"], _NOTHING, _plain(_set("reference_time"))),
    ("time_zone", ["Mars/Olympus_Mons", "", "Europe/Paris ", "utc/x", "a" * 65, "1UTC", 1], st.integers(),
     _templated(_set("time_zone"))),
    ("time_zone", ["Europe/Paris", "UTC"], _NOTHING, _plain(_set("time_zone"))),
    ("job_id", _BAD_IDS, st.integers(), _set("job_id")),
    ("correlation_id", _BAD_IDS, st.integers(), _set("correlation_id")),
    ("mode", ["Full", "", "fast", "metadata ", None, True], _NOTHING, _set("mode")),
    ("columns", [[], ["a", "a"], [""], ["a" * 1025], "a", [1], ["a", None], {}], _NOTHING, _set("columns")),
    ("fan_out", [{"mode": "sometimes"}, {"mode": None}, {"max_in_flight": 0}, {"max_in_flight": 1001},
                 {"max_in_flight": 2.5}, {"max_in_flight": True}, {"max_in_flight": "5"},
                 {"tolerated_failure_percent": -0.5}, {"tolerated_failure_percent": 100.5},
                 {"tolerated_failure_percent": "5"}, {"max_shards": 10}, "always", [], None, 1], _NOTHING, _fan_out),
    ("reply_topic", ["projects/p/topics/ab", "topics/results", "results", "projects/p/topics/1abc",
                     "projects//topics/abc", "", 1], _NOTHING, _set("reply_topic")),
    ("reply_attributes", [{"status": "x"}, {"job_id": "x"}, {"goog-x": "y"}, {"googx": "y"}, {"": "v"}, {"a b": "v"},
                          {"k": "é" * 600}, {"k": 1}, {"k": None}, {f"k{i}": "v" for i in range(33)}, {"k": "x" * 1025},
                          "x", []], _NOTHING, _set("reply_attributes")),
    (None, [0, 1, 2], _NOTHING, _lone_surrogate),  # names the field it put the surrogate in
    (None, ["bucket_name", "prefixes", "Mode", "fanout", "reply", "extra", "fan_out_mode"], _NOTHING, _unknown_field),
]


def _mutate(mutation, value, job: dict) -> tuple[str, dict]:
    field, _, _, change = mutation
    job = copy.deepcopy(job)
    return change(job, value) or field, job


@st.composite
def mutated_jobs(draw, bucket=buckets) -> tuple[str, dict]:
    """A valid job changed in one field so that it is invalid, and the name of that field (which the job's
    problems must mention)."""
    mutation = draw(st.sampled_from(MUTATIONS))
    value = draw(st.sampled_from(mutation[1]) | mutation[2])
    return _mutate(mutation, value, draw(valid_jobs(bucket)))


# Every field set, for listed_mutations.
FULL_JOB = {"bucket": "my-bucket", "prefix": "data/2026/", "job_id": "job-1", "mode": "full", "columns": ["id", "x"],
            "fan_out": {"mode": "always", "max_in_flight": 10, "tolerated_failure_percent": 5},
            "correlation_id": "run-1", "reply_topic": "projects/p/topics/results", "reply_attributes": {"stage": "2"}}


TEMPLATED_JOB = {**{k: v for k, v in FULL_JOB.items() if k != "prefix"}, "prefix_template": "x/{date-1d:%Y/%m/%d}/",
                 "time_zone": "Europe/Paris", "reference_time": "2026-11-28T03:00:00Z"}


def listed_mutations(job: dict = FULL_JOB) -> list[tuple[str, dict]]:
    """Every listed bad value of every mutation, put in ``job``: (the field named, the job)."""
    return [_mutate(mutation, value, job) for mutation in MUTATIONS for value in mutation[1]]


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
