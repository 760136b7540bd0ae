"""Date templates of prefix_template: the syntax, its errors, and the calendar."""

from datetime import UTC, datetime

import pytest

from worker.errors import InvalidJob
from worker.jobs import parse_job, parse_time
from worker.templates import TemplateError, check, render

AT = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


@pytest.mark.parametrize(("template", "zone", "expected"), [
    ("events/dt={date-1d:%Y-%m-%d}/", "UTC", "events/dt=2026-11-27/"),
    ("events/dt={date}/", "UTC", "events/dt=2026-11-28/"),
    ("exports/{date:%Y}/{date:%m}/", "UTC", "exports/2026/11/"),
    ("hourly/{date-1h:%Y-%m-%dT%H}/", "UTC", "hourly/2026-11-28T02/"),
    ("weekly/{date-1w:%G-W%V}/", "UTC", "weekly/2026-W47/"),
    ("monthly/{date-1mo:%Y-%m}/", "UTC", "monthly/2026-10/"),
    ("next/{date+2d:%j}/", "UTC", "next/334/"),
    # 03:00 UTC is still the 27th in Los Angeles: the date is the zone's own
    ("events/dt={date:%Y-%m-%d}/", "America/Los_Angeles", "events/dt=2026-11-27/"),
    ("events/dt={date-1d}/", "Asia/Tokyo", "events/dt=2026-11-27/"),
    ("{{literal}}/{date:%d}", "UTC", "{literal}/28"),
    ("plain/prefix/", "UTC", "plain/prefix/"),
    ("100%/{date:%d%%}", "UTC", "100%/28%"),
])
def test_templates_resolve(template, zone, expected):
    assert check(template) == []
    assert render(template, AT, zone) == expected


def test_months_clamp_to_the_last_day_and_cross_years():
    assert render("{date-1mo}", datetime(2026, 3, 31, tzinfo=UTC)) == "2026-02-28"
    assert render("{date-1mo}", datetime(2024, 3, 31, tzinfo=UTC)) == "2024-02-29"
    assert render("{date-11mo:%Y-%m}", datetime(2026, 1, 15, tzinfo=UTC)) == "2025-02"
    assert render("{date+1mo:%Y-%m}", datetime(2026, 12, 15, tzinfo=UTC)) == "2027-01"


def test_a_day_back_keeps_the_local_date_across_a_dst_change():
    # 2026-03-29 01:30 UTC is 03:30 CEST on the day Berlin moves its clocks; a day earlier is the 28th.
    at = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    assert render("{date-1d:%Y-%m-%d %H}", at, "Europe/Berlin") == "2026-03-28 03"
    assert render("{date-1h:%H}", at, "Europe/Berlin") == "01"  # an hour is elapsed time: 00:30 UTC


@pytest.mark.parametrize(("template", "says"), [
    ("x/{data}/", "unknown placeholder {data}"),
    ("x/{date-1y}/", "unknown placeholder {date-1y}"),
    ("x/{date:%Z}/", "unsupported directive %Z"),
    ("x/{date:%B}/", "unsupported directive %B"),  # locale-dependent
    ("x/{date-1d", "unmatched '{'"),
    ("x}/", "unmatched '}'"),
    ("x/{}/", "unknown placeholder {}"),
])
def test_unknown_templates_are_errors(template, says):
    assert any(says in problem for problem in check(template))
    with pytest.raises(TemplateError, match=r"unknown|unsupported|unmatched"):
        render(template, AT)


def test_a_job_resolves_its_template_against_the_publish_time_in_its_zone():
    job = parse_job('{"bucket": "abc", "prefix_template": "e/dt={date-1d}/", "time_zone": "Europe/Berlin"}',
                    publish_time="2026-11-27T23:30:00.123456789Z", message_id="m-1")
    assert job.prefix == "e/dt=2026-11-27/"  # 00:30 on the 28th in Berlin
    assert job.reference_time == "2026-11-27T23:30:00.123456Z"
    assert job.prefix_template == "e/dt={date-1d}/"


def test_the_worker_zone_is_the_default_and_reference_time_wins_over_publish_time():
    job = parse_job('{"bucket": "abc", "prefix_template": "e/{date}/"}', publish_time="2026-11-28T03:00:00Z",
                    time_zone="America/New_York")
    assert job.prefix == "e/2026-11-27/"
    backfill = parse_job('{"bucket": "abc", "prefix_template": "e/{date}/", "reference_time": "2026-01-02T12:00:00Z"}',
                         publish_time="2026-11-28T03:00:00Z")
    assert (backfill.prefix, backfill.reference_time) == ("e/2026-01-02/", "2026-01-02T12:00:00Z")


@pytest.mark.parametrize(("body", "says"), [
    ('{"bucket": "abc", "prefix_template": "e/{yesterday}/"}', "prefix_template: unknown placeholder {yesterday}"),
    ('{"bucket": "abc", "prefix_template": "e/{date}/", "time_zone": "Mars/Olympus"}', "time_zone: unknown time zone"),
    ('{"bucket": "abc", "prefix": "e/", "prefix_template": "e/{date}/"}', "give prefix or prefix_template, not both"),
    ('{"bucket": "abc"}', "'prefix' is a required property"),
    ('{"bucket": "abc", "prefix_template": "e/{date}/", "reference_time": "yesterday"}', "reference_time"),
])
def test_bad_templates_are_invalid_jobs(body, says):
    with pytest.raises(InvalidJob) as caught:
        parse_job(body, publish_time="2026-11-28T03:00:00Z")
    assert says in str(caught.value)


def test_a_plain_prefix_with_braces_is_literal():
    job = parse_job('{"bucket": "abc", "prefix": "e/{date-1d}/"}', publish_time="2026-11-28T03:00:00Z")
    assert job.prefix == "e/{date-1d}/" and job.prefix_template is None


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-28T03:00:00Z", datetime(2026, 11, 28, 3, tzinfo=UTC)),
    ("2026-11-28T03:00:00.123456789Z", datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=UTC)),
    ("2026-11-28T04:00:00+01:00", datetime(2026, 11, 28, 3, tzinfo=UTC)),
    ("2026-11-28", None), ("2026-13-01T00:00:00Z", None), ("", None),
])
def test_rfc3339_times(text, expected):
    assert parse_time(text) == expected
