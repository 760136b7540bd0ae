"""When a run's records expire (worker/retention.py): RUNS_RETENTION_DAYS after they are written, as the
timezone-aware UTC datetime Firestore stores as a Timestamp, which its TTL policy on expire_at reads."""

import math
from datetime import UTC, datetime, timedelta

import pytest

from worker.retention import DEFAULT_DAYS, FIELD, MAX_DAYS, expire_at


def test_a_record_expires_whole_days_after_it_is_written_in_utc():
    now = datetime(2026, 3, 28, 23, 30, 15, 250_000, tzinfo=UTC).timestamp()  # a clock change in Europe follows
    expires = expire_at(now, 30)
    assert expires == datetime(2026, 4, 27, 23, 30, 15, 250_000, tzinfo=UTC)
    assert expires.tzinfo is UTC and expires.utcoffset() == timedelta(0)
    assert expires.timestamp() - now == 30 * 86_400
    assert expire_at(0.0, 1) == datetime(1970, 1, 2, tzinfo=UTC)


def test_the_defaults_are_the_settings_and_the_field_the_ttl_policies_name():
    assert (FIELD, DEFAULT_DAYS, MAX_DAYS) == ("expire_at", 30, 3650)
    assert expire_at(1_700_000_000.0, MAX_DAYS).year == 2033


@pytest.mark.parametrize(("now", "days"), [
    (1_700_000_000.0, 0), (1_700_000_000.0, -1), (1_700_000_000.0, MAX_DAYS + 1), (1_700_000_000.0, 1.5),
    (1_700_000_000.0, True), (1_700_000_000.0, "30"), (math.nan, 30), (math.inf, 30),
])
def test_days_out_of_range_and_times_that_are_not_times_are_refused(now, days):
    with pytest.raises(ValueError, match=r"(days|now) must be"):
        expire_at(now, days)


def test_the_firestore_client_stores_it_as_a_timestamp():
    """What google-cloud-firestore sends for the value: a timestamp, the type a TTL policy deletes by (a naive
    datetime would be taken as UTC too, but an int or a string would never expire)."""
    from google.cloud.firestore_v1 import _helpers

    value = _helpers.encode_value(expire_at(1_700_000_000.5, 30))
    pb = type(value).pb(value)
    assert pb.WhichOneof("value_type") == "timestamp_value"
    assert pb.timestamp_value.seconds == 1_700_000_000 + 30 * 86_400 and pb.timestamp_value.nanos == 500_000_000
