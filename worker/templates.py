"""Date templates of ``prefix_template``: a scheduled job's fixed message names moving data.

Pure. A template is a plain key prefix with placeholders in braces::

    events/dt={date-1d:%Y-%m-%d}/      ->  events/dt=2026-11-27/   (publish time 2026-11-28T03:00Z)
    exports/{date:%Y}/{date:%m}/        ->  exports/2026/11/
    hourly/{date-1h:%Y-%m-%dT%H}/       ->  hourly/2026-11-28T02/

``{date}`` is the reference time (the message's publish time, or the job's ``reference_time``) in the
job's time zone; an offset of whole weeks (``w``), days (``d``), hours (``h``) or calendar months
(``mo``) moves it; the format after ``:`` uses a fixed set of strftime directives (default
``%Y-%m-%d``). ``{{`` and ``}}`` are literal braces. Anything else in braces is an error, so a typo
never silently becomes a literal key.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SPEC = re.compile(r"^date(?:(?P<sign>[+-])(?P<count>\d{1,4})(?P<unit>mo|w|d|h))?(?::(?P<format>.+))?$")
DEFAULT_FORMAT = "%Y-%m-%d"
# Numeric directives: the same output on every platform and locale, and safe in a key.
DIRECTIVES = frozenset("YymdHMSjUWVGuw%")
SYNTAX = "{date[+|-N(w|d|h|mo)][:FORMAT]}"


class TemplateError(ValueError):
    """A template that cannot be resolved; the message says where and why."""


def check(template: str) -> list[str]:
    """Every problem with ``template`` (empty when it resolves)."""
    problems = []
    for match in PLACEHOLDER.finditer(template):
        text = match.group(0)
        if text in ("{{", "}}"):
            continue
        if match.group(1) is None:
            problems.append(f"unmatched {text!r} at {match.start()}: write {text}{text} for a literal brace")
            continue
        spec = _SPEC.match(match.group(1))
        if not spec:
            problems.append(f"unknown placeholder {text}: the syntax is {SYNTAX}")
            continue
        problems += _check_format(text, spec.group("format") or DEFAULT_FORMAT)
    return problems


def _check_format(text: str, fmt: str) -> list[str]:
    problems = []
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            directive = fmt[i + 1:i + 2]
            if directive not in DIRECTIVES:
                problems.append(f"{text}: unsupported directive %{directive} (allowed: "
                                f"{' '.join('%' + d for d in sorted(DIRECTIVES))})")
            i += 2
        else:
            i += 1
    return problems


def render(template: str, at: datetime, time_zone: str = "UTC") -> str:
    """The prefix ``template`` names at reference time ``at`` (aware) in ``time_zone``."""
    problems = check(template)
    if problems:
        raise TemplateError("; ".join(problems))
    try:
        return _render(template, at.astimezone(zone(time_zone)))
    except (OverflowError, ValueError) as e:  # datetime's range is the years 1 to 9999
        if isinstance(e, TemplateError):
            raise
        raise TemplateError(f"the date falls outside the years 1-9999 (reference time {at.isoformat()} in "
                            f"{time_zone})") from None


def _render(template: str, local: datetime) -> str:
    def one(match: re.Match) -> str:
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        spec = _SPEC.match(match.group(1))
        assert spec is not None
        moment = _shift(local, spec.group("sign"), spec.group("count"), spec.group("unit"))
        return moment.strftime(spec.group("format") or DEFAULT_FORMAT)

    return PLACEHOLDER.sub(one, template)


def zone(name: str) -> ZoneInfo:
    """An IANA time zone; TemplateError for an unknown name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise TemplateError(f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin") from None


def _shift(moment: datetime, sign: str | None, count: str | None, unit: str | None) -> datetime:
    if not sign:
        return moment
    n = int(count) * (1 if sign == "+" else -1)
    if unit == "mo":  # calendar months; the day is clamped to the month's last day
        month = moment.month - 1 + n
        year, month = moment.year + month // 12, month % 12 + 1
        last = (datetime(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
        return moment.replace(year=year, month=month, day=min(moment.day, last))
    # Wall-clock arithmetic: "1 day ago" keeps the local hour across a DST change.
    delta = {"w": timedelta(weeks=n), "d": timedelta(days=n), "h": timedelta(hours=n)}[unit or "d"]
    if unit == "h":
        return (moment.astimezone(ZoneInfo("UTC")) + delta).astimezone(moment.tzinfo)
    return moment + delta
