"""Settings, read from the environment in one place.

Names follow the ecosystems' own variables where they exist. Local endpoints are not
settings of ours: boto3 reads ``AWS_ENDPOINT_URL``, the Pub/Sub client reads
``PUBSUB_EMULATOR_HOST`` and google-auth reads ``GCE_METADATA_HOST`` / ``GCE_METADATA_IP``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from worker import retention
from worker.errors import ConfigError
from worker.partials import MAX_PAYLOAD_BYTES
from worker.summary import Limits
from worker.templates import TemplateError, zone

AWS_ROLE_ARN = "AWS_ROLE_ARN"
ID_TOKEN_AUDIENCE = "ID_TOKEN_AUDIENCE"
REPLY_TOPIC = "REPLY_TOPIC"
GOOGLE_CLOUD_PROJECT = "GOOGLE_CLOUD_PROJECT"
AWS_REGION = "AWS_REGION"
ALLOWED_BUCKETS = "ALLOWED_BUCKETS"
READ_CONCURRENCY = "READ_CONCURRENCY"
STS_DURATION_SECONDS = "STS_DURATION_SECONDS"
JOB_DEADLINE_SECONDS = "JOB_DEADLINE_SECONDS"
ID_TOKEN_SOURCE = "ID_TOKEN_SOURCE"
ID_TOKEN_SERVICE_ACCOUNT = "ID_TOKEN_SERVICE_ACCOUNT"
ID_TOKEN_FILE = "ID_TOKEN_FILE"
TOKEN_SOURCES = ("metadata", "impersonate", "file")
FULL_MODE_CONCURRENCY = "FULL_MODE_CONCURRENCY"
FULL_MODE_JOBS = "FULL_MODE_JOBS"
ALLOWED_REPLY_TOPICS = "ALLOWED_REPLY_TOPICS"
TEMPLATE_TIME_ZONE = "TEMPLATE_TIME_ZONE"
AWS_MAX_ATTEMPTS = "AWS_MAX_ATTEMPTS"
RESULT_MAX_BYTES = "RESULT_MAX_BYTES"
FOOTER_MAX_BYTES = "FOOTER_MAX_BYTES"
SCHEMA_MAX_DEPTH = "SCHEMA_MAX_DEPTH"
FULL_MODE_BATCH_BYTES = "FULL_MODE_BATCH_BYTES"
FIRESTORE_DATABASE = "FIRESTORE_DATABASE"
RUNS_COLLECTION = "RUNS_COLLECTION"
PARTIALS_BUCKET = "PARTIALS_BUCKET"
SHARD_TOPIC = "SHARD_TOPIC"
SHARD_DEAD_LETTER_TOPIC = "SHARD_DEAD_LETTER_TOPIC"
FANOUT_MIN_OBJECTS = "FANOUT_MIN_OBJECTS"
FANOUT_MIN_BYTES = "FANOUT_MIN_BYTES"
SHARD_OBJECTS = "SHARD_OBJECTS"
SHARD_SECONDS = "SHARD_SECONDS"
FANOUT_MAX_IN_FLIGHT = "FANOUT_MAX_IN_FLIGHT"
LEASE_SECONDS = "LEASE_SECONDS"
MERGE_FAN_IN = "MERGE_FAN_IN"
SWEEP_STALL_SECONDS = "SWEEP_STALL_SECONDS"
PARTIAL_MAX_BYTES = "PARTIAL_MAX_BYTES"
RUNS_RETENTION_DAYS = "RUNS_RETENTION_DAYS"
K_SERVICE = "K_SERVICE"
K_REVISION = "K_REVISION"

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


@dataclass(frozen=True)
class Settings:
    """Everything the worker reads from its environment, checked once."""

    role_arn: str
    audience: str
    reply_topic: str | None = None
    project: str | None = None
    region: str = "us-east-1"
    allowed_buckets: frozenset[str] = frozenset()
    read_concurrency: int = 32
    sts_duration_seconds: int = 3600
    job_deadline_seconds: int = 480
    full_mode_concurrency: int = 2
    full_mode_jobs: int = 1
    token_source: str = "metadata"
    token_service_account: str | None = None
    token_file: str | None = None
    allowed_reply_topics: frozenset[str] = frozenset()
    template_time_zone: str = "UTC"
    aws_max_attempts: int = 5
    result_max_bytes: int = 9_000_000
    footer_max_bytes: int = 16 * 1024 * 1024
    schema_max_depth: int = 100
    full_mode_batch_bytes: int = 32 * 1024 * 1024
    service: str = "parquet-summary"
    revision: str = "local"
    firestore_database: str = "(default)"
    runs_collection: str = "summary-runs"
    partials_bucket: str | None = None
    shard_topic: str | None = None
    shard_dead_letter_topic: str | None = None
    fanout_min_objects: int = 5000
    fanout_min_bytes: int = 16 << 30
    shard_objects: int = 1000
    shard_seconds: int = 240
    fanout_max_in_flight: int = 50
    lease_seconds: int = 30
    merge_fan_in: int = 50
    sweep_stall_seconds: int = 900
    partial_max_bytes: int = MAX_PAYLOAD_BYTES
    runs_retention_days: int = retention.DEFAULT_DAYS

    @property
    def fanout_enabled(self) -> bool:
        """Fan-out needs somewhere to keep partials and a topic for shards (Firestore has a default database)."""
        return bool(self.partials_bucket and self.shard_topic)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, require_role: bool = True) -> Settings:
        """Read and check the settings; raise ConfigError naming every bad variable.

        ``require_role=False`` (the CLI) makes AWS_ROLE_ARN optional: without it, boto3's
        default credential chain is used; with it, ID_TOKEN_AUDIENCE is required as usual.
        """
        env = os.environ if env is None else env
        problems: list[str] = []

        def get(name: str) -> str:
            return env.get(name, "").strip()

        role_arn = get(AWS_ROLE_ARN)
        if not role_arn:
            if require_role:
                problems.append(f"{AWS_ROLE_ARN} is required (the IAM role to assume, arn:aws:iam::ACCOUNT:role/NAME)")
        elif not _ROLE_ARN.match(role_arn):
            problems.append(f"{AWS_ROLE_ARN} is not an IAM role ARN: {role_arn!r}")
        audience = get(ID_TOKEN_AUDIENCE)
        if not audience and (role_arn or require_role):
            problems.append(f"{ID_TOKEN_AUDIENCE} is required with {AWS_ROLE_ARN} "
                            "(the audience of the Google ID token, as in the role's trust policy)")
        project = get(GOOGLE_CLOUD_PROJECT) or None
        reply_topic = _topic_setting(REPLY_TOPIC, get(REPLY_TOPIC), project, problems)
        shard_topics = {name: _topic_setting(name, get(name), project, problems)
                        for name in (SHARD_TOPIC, SHARD_DEAD_LETTER_TOPIC)}
        partials_bucket = get(PARTIALS_BUCKET) or None
        if partials_bucket and not _BUCKET.match(partials_bucket):
            problems.append(f"{PARTIALS_BUCKET} is not a Cloud Storage bucket name: {partials_bucket!r}")
        if bool(partials_bucket) != bool(shard_topics[SHARD_TOPIC]):
            problems.append(f"fan-out needs both {PARTIALS_BUCKET} and {SHARD_TOPIC} (or neither, to run every job "
                            "on one instance)")
        # A shard's share of a job: objects it lists for itself, and the time it reads before handing the rest on.
        fanout_min_objects = _int(get(FANOUT_MIN_OBJECTS), FANOUT_MIN_OBJECTS, 5000, 1, 10_000_000, problems)
        fanout_min_bytes = _int(get(FANOUT_MIN_BYTES), FANOUT_MIN_BYTES, 16 << 30, 1, 1 << 50, problems)
        shard_objects = _int(get(SHARD_OBJECTS), SHARD_OBJECTS, 1000, 1, 100_000, problems)
        fanout_max_in_flight = _int(get(FANOUT_MAX_IN_FLIGHT), FANOUT_MAX_IN_FLIGHT, 50, 1, 1000, problems)
        # Run work is held under leases renewed every third of this; a dead holder's work is taken over after it.
        lease_seconds = _int(get(LEASE_SECONDS), LEASE_SECONDS, 30, 5, 600, problems)
        # Partials one merge task (or the answer) merges at most: ~0.17 s each for a 250-column full-mode partial.
        # At least 10: each level writes the run's record twice, and levels are log(shards) to this base.
        merge_fan_in = _int(get(MERGE_FAN_IN), MERGE_FAN_IN, 50, 10, 1000, problems)
        # The sweeper publishes again work dispatched this long ago with no live lease (its messages lost).
        sweep_stall_seconds = _int(get(SWEEP_STALL_SECONDS), SWEEP_STALL_SECONDS, 900, 10, 86400, problems)
        # A partial summary larger than this, stored or inflated, is refused unread (worker.partials): its range
        # counts as lost. The merge holds one partial at a time, with the summary it merges into.
        partial_max = _int(get(PARTIAL_MAX_BYTES), PARTIAL_MAX_BYTES, MAX_PAYLOAD_BYTES, 1 << 20, 2 << 30, problems)
        # Days a run's records (Firestore TTL on expire_at) and its partials (the bucket's lifecycle) are kept.
        retention_days = _int(get(RUNS_RETENTION_DAYS), RUNS_RETENTION_DAYS, retention.DEFAULT_DAYS, 1,
                              retention.MAX_DAYS, problems)
        allowed_reply_topics = set()
        for name in filter(None, (t.strip() for t in get(ALLOWED_REPLY_TOPICS).split(","))):
            with contextlib.suppress(ValueError):  # a short name without a project: refused just below
                name = topic_path(name, project)
            if is_topic_path(name):
                allowed_reply_topics.add(name)
            else:
                problems.append(f"{ALLOWED_REPLY_TOPICS} holds {name!r}: give projects/P/topics/T "
                                f"(or short names with {GOOGLE_CLOUD_PROJECT} set)")
        time_zone = get(TEMPLATE_TIME_ZONE) or "UTC"
        try:
            zone(time_zone)
        except TemplateError as e:
            problems.append(f"{TEMPLATE_TIME_ZONE}: {e}")
        # botocore's own variable: attempts per S3 request (first try included) before the job is handed back.
        max_attempts = _int(get(AWS_MAX_ATTEMPTS), AWS_MAX_ATTEMPTS, 5, 1, 10, problems)
        read_concurrency = _int(get(READ_CONCURRENCY), READ_CONCURRENCY, 32, 1, 256, problems)
        duration = _int(get(STS_DURATION_SECONDS), STS_DURATION_SECONDS, 3600, 900, 43200, problems)
        # Event-driven functions stop at 540 s: by default a job stops at 480 s and says how far it got.
        deadline = _int(get(JOB_DEADLINE_SECONDS), JOB_DEADLINE_SECONDS, 480, 1, 3600, problems)
        # Unset: 240 s, or half the deadline if that is shorter (a shard stores and commits within the deadline).
        shard_seconds = _int(get(SHARD_SECONDS), SHARD_SECONDS, max(1, min(240, deadline // 2)), 1, 3600, problems)
        if shard_seconds > deadline / 2 and get(SHARD_SECONDS):
            problems.append(f"{SHARD_SECONDS} ({shard_seconds}) may be at most half of {JOB_DEADLINE_SECONDS} "
                            f"({deadline}): a shard reads for its budget, then stores and commits within the deadline")
        # Full mode is CPU-bound: objects in flight beyond the cores only add memory.
        full_concurrency = _int(get(FULL_MODE_CONCURRENCY), FULL_MODE_CONCURRENCY, 2, 1, 64, problems)
        # An instance serves several requests at once (metadata jobs wait on S3); full-mode jobs are CPU- and
        # memory-bound, so at most this many run at once and the others wait their turn inside the instance.
        full_jobs = _int(get(FULL_MODE_JOBS), FULL_MODE_JOBS, 1, 1, 64, problems)
        # Pub/Sub takes 10 MB per publish request, attributes included; a larger result is reduced (results.fit).
        result_max_bytes = _int(get(RESULT_MAX_BYTES), RESULT_MAX_BYTES, 9_000_000, 10_000, 9_500_000, problems)
        # Bounds against hostile files (worker.summary.Limits): each costs that file, never the instance.
        footer_max = _int(get(FOOTER_MAX_BYTES), FOOTER_MAX_BYTES, 16 << 20, 64 << 10, 256 << 20, problems)
        depth = _int(get(SCHEMA_MAX_DEPTH), SCHEMA_MAX_DEPTH, 100, 2, 1000, problems)
        batch = _int(get(FULL_MODE_BATCH_BYTES), FULL_MODE_BATCH_BYTES, 32 << 20, 1 << 20, 1 << 30, problems)
        source = get(ID_TOKEN_SOURCE) or "metadata"
        if source not in TOKEN_SOURCES:
            problems.append(f"{ID_TOKEN_SOURCE} must be one of {', '.join(TOKEN_SOURCES)}: {source!r}")
        if source == "impersonate" and not get(ID_TOKEN_SERVICE_ACCOUNT):
            problems.append(f"{ID_TOKEN_SOURCE}=impersonate needs {ID_TOKEN_SERVICE_ACCOUNT} (the account's email)")
        if source == "file" and not get(ID_TOKEN_FILE):
            problems.append(f"{ID_TOKEN_SOURCE}=file needs {ID_TOKEN_FILE} (a file holding a Google ID token)")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems), problems=problems)
        return cls(
            role_arn=role_arn,
            audience=audience,
            reply_topic=reply_topic,
            project=project,
            region=get(AWS_REGION) or env.get("AWS_DEFAULT_REGION", "").strip() or "us-east-1",
            allowed_buckets=frozenset(b.strip() for b in get(ALLOWED_BUCKETS).split(",") if b.strip()),
            read_concurrency=read_concurrency,
            sts_duration_seconds=duration,
            job_deadline_seconds=deadline,
            full_mode_concurrency=full_concurrency,
            full_mode_jobs=full_jobs,
            token_source=source,
            token_service_account=get(ID_TOKEN_SERVICE_ACCOUNT) or None,
            token_file=get(ID_TOKEN_FILE) or None,
            allowed_reply_topics=frozenset(allowed_reply_topics),
            template_time_zone=time_zone,
            aws_max_attempts=max_attempts,
            result_max_bytes=result_max_bytes,
            footer_max_bytes=footer_max,
            schema_max_depth=depth,
            full_mode_batch_bytes=batch,
            service=get(K_SERVICE) or "parquet-summary",
            revision=get(K_REVISION) or "local",
            firestore_database=get(FIRESTORE_DATABASE) or "(default)",
            runs_collection=get(RUNS_COLLECTION) or "summary-runs",
            partials_bucket=partials_bucket,
            shard_topic=shard_topics[SHARD_TOPIC],
            shard_dead_letter_topic=shard_topics[SHARD_DEAD_LETTER_TOPIC],
            fanout_min_objects=fanout_min_objects,
            fanout_min_bytes=fanout_min_bytes,
            shard_objects=shard_objects,
            shard_seconds=shard_seconds,
            fanout_max_in_flight=fanout_max_in_flight,
            lease_seconds=lease_seconds,
            merge_fan_in=merge_fan_in,
            sweep_stall_seconds=sweep_stall_seconds,
            partial_max_bytes=partial_max,
            runs_retention_days=retention_days,
        )

    def limits(self) -> Limits:
        """The bounds a job reads each object within."""
        return Limits(footer_max_bytes=self.footer_max_bytes, schema_max_depth=self.schema_max_depth,
                      full_mode_batch_bytes=self.full_mode_batch_bytes)

    def reply_topic_allowed(self, topic: str) -> bool:
        """Whether a job may send its result to ``topic`` (REPLY_TOPIC, or one of ALLOWED_REPLY_TOPICS)."""
        return topic == self.reply_topic or topic in self.allowed_reply_topics

    def require_reply_topic(self) -> str:
        """The reply topic; raise ConfigError when the Pub/Sub path runs without one."""
        if not self.reply_topic:
            raise ConfigError(f"{REPLY_TOPIC} is required to answer Pub/Sub jobs (projects/P/topics/T)")
        return self.reply_topic


def is_topic_path(name: str) -> bool:
    """Whether ``name`` is a full topic path, ``projects/P/topics/T``."""
    return _TOPIC.match(name) is not None


def topic_path(name: str, project: str | None) -> str:
    """``projects/P/topics/T`` from a full path (returned as given), or from a short name and a project: the
    one rule for every topic the worker and its command line are given. Raises ValueError for a short name
    without a project, or a path that is not a topic path."""
    if "/" in name:
        if not is_topic_path(name):
            raise ValueError(f"topic {name!r} is not a topic path: give projects/P/topics/T, or a short name")
        return name
    if not project:
        raise ValueError(f"topic {name!r} is a short name: give projects/P/topics/T or set {GOOGLE_CLOUD_PROJECT}")
    return f"projects/{project}/topics/{name}"


def _topic_setting(setting: str, value: str, project: str | None, problems: list[str]) -> str | None:
    """The full path of the topic a setting names (None if unset), or None with the problem recorded."""
    if not value:
        return None
    try:
        topic = topic_path(value, project)
    except ValueError:
        if "/" in value:
            problems.append(f"{setting} must look like projects/P/topics/T: {value!r}")
        else:
            problems.append(f"{setting} is a short name; give projects/P/topics/T or set {GOOGLE_CLOUD_PROJECT}")
        return None
    if not is_topic_path(topic):  # a short name joined to a project that is no project ID ("a/b")
        problems.append(f"{setting} must look like projects/P/topics/T: {topic!r}")
        return None
    return topic


def _int(raw: str, name: str, default: int, low: int, high: int, problems: list[str]) -> int:
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be an integer: {raw!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{name} must be between {low} and {high}: {value}")
    return value
