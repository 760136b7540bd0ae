"""Settings: read once from the environment; a bad or missing setting fails loudly, naming it."""

import pytest

from worker import partials, retention
from worker.config import Settings, topic_path
from worker.errors import ConfigError

GOOD = {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/reader", "ID_TOKEN_AUDIENCE": "//aud"}


def test_defaults():
    s = Settings.from_env(GOOD)
    assert s.role_arn == GOOD["AWS_ROLE_ARN"] and s.audience == "//aud"
    assert s.region == "us-east-1" and s.allowed_buckets == frozenset() and s.reply_topic is None
    assert s.read_concurrency == 32 and s.sts_duration_seconds == 3600


def test_missing_required_settings_are_all_named():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({})
    assert "AWS_ROLE_ARN" in str(info.value) and "ID_TOKEN_AUDIENCE" in str(info.value)
    assert len(info.value.problems) == 2


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"AWS_ROLE_ARN": "not-an-arn"}, "AWS_ROLE_ARN is not an IAM role ARN"),
    ({"REPLY_TOPIC": "results"}, "REPLY_TOPIC is a short name"),
    ({"REPLY_TOPIC": "projects/p/subscriptions/s"}, "REPLY_TOPIC must look like"),
    ({"READ_CONCURRENCY": "many"}, "READ_CONCURRENCY must be an integer"),
    ({"READ_CONCURRENCY": "0"}, "between 1 and 256"),
    ({"STS_DURATION_SECONDS": "60"}, "between 900 and 43200"),
    ({"PARTIAL_MAX_BYTES": "1000"}, "PARTIAL_MAX_BYTES must be between 1048576 and 2147483648: 1000"),
    ({"PARTIAL_MAX_BYTES": str((2 << 30) + 1)}, "PARTIAL_MAX_BYTES must be between"),
    ({"PARTIAL_MAX_BYTES": "256MiB"}, "PARTIAL_MAX_BYTES must be an integer"),
    ({"RUNS_RETENTION_DAYS": "0"}, "RUNS_RETENTION_DAYS must be between 1 and 3650: 0"),
    ({"RUNS_RETENTION_DAYS": "3651"}, "RUNS_RETENTION_DAYS must be between 1 and 3650"),
    ({"RUNS_RETENTION_DAYS": "1.5"}, "RUNS_RETENTION_DAYS must be an integer"),
])
def test_bad_settings(extra, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Settings.from_env(GOOD | extra)


def test_partials_are_bounded_and_runs_kept_for_days_by_default():
    s = Settings.from_env(GOOD)
    assert s.partial_max_bytes == 256 << 20 == partials.MAX_PAYLOAD_BYTES  # what decode and the store default to
    assert s.runs_retention_days == 30 == retention.DEFAULT_DAYS
    given = Settings.from_env(GOOD | {"PARTIAL_MAX_BYTES": str(1 << 20), "RUNS_RETENTION_DAYS": "3650"})
    assert (given.partial_max_bytes, given.runs_retention_days) == (1 << 20, 3650)


def test_values_are_parsed():
    s = Settings.from_env(GOOD | {"REPLY_TOPIC": "results", "GOOGLE_CLOUD_PROJECT": "proj", "AWS_REGION": "eu-west-1",
                                  "ALLOWED_BUCKETS": " a-bucket, b-bucket ,,", "K_SERVICE": "svc"})
    assert s.reply_topic == "projects/proj/topics/results"
    assert s.region == "eu-west-1"
    assert s.allowed_buckets == {"a-bucket", "b-bucket"}
    assert s.service == "svc"


def test_reply_topic_is_required_only_to_answer_pubsub():
    with pytest.raises(ConfigError, match="REPLY_TOPIC"):
        Settings.from_env(GOOD).require_reply_topic()


def test_a_short_topic_name_becomes_a_full_path_by_one_rule():
    assert topic_path("results", "proj") == "projects/proj/topics/results"
    assert topic_path("projects/other/topics/t", "proj") == "projects/other/topics/t"
    with pytest.raises(ValueError, match="short name"):
        topic_path("results", None)
    for malformed in ("a/b", "projects/p/topics/", "projects/p/subscriptions/s", "projects/p/topics/t/x"):
        with pytest.raises(ValueError, match="not a topic path"):
            topic_path(malformed, "proj")
    s = Settings.from_env(GOOD | {"GOOGLE_CLOUD_PROJECT": "proj", "REPLY_TOPIC": "results", "PARTIALS_BUCKET": "parts",
                                  "SHARD_TOPIC": "shards", "SHARD_DEAD_LETTER_TOPIC": "dead",
                                  "ALLOWED_REPLY_TOPICS": "stage-2,projects/x/topics/y"})
    assert (s.reply_topic, s.shard_topic, s.shard_dead_letter_topic) == (
        topic_path("results", "proj"), topic_path("shards", "proj"), topic_path("dead", "proj"))
    assert s.allowed_reply_topics == {"projects/proj/topics/stage-2", "projects/x/topics/y"}


def test_a_shard_budget_over_half_the_deadline_is_refused():
    env = {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/r", "ID_TOKEN_AUDIENCE": "a",
           "JOB_DEADLINE_SECONDS": "300", "SHARD_SECONDS": "200"}
    with pytest.raises(ConfigError, match="SHARD_SECONDS"):
        Settings.from_env(env)
    assert Settings.from_env(env | {"SHARD_SECONDS": "150"}).shard_seconds == 150
