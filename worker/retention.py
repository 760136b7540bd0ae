"""Pure: when a run's records expire (RUNS_RETENTION_DAYS).

Run, shard and merge documents carry ``expire_at``, a timestamp: Firestore's TTL policy on that field (one per
collection group, made by deploy/) deletes a document once it is past, typically within 24 hours. The partials
bucket's lifecycle rule deletes a partial the same number of days after it is written. A shard's record is
written at or after its partial, so the partial goes first and nothing outlives the records that name it; a
run (and a redrive of its failed ranges) must finish within those days, or its merge finds partials gone.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

FIELD = "expire_at"  # the field the TTL policies name (deploy/terraform/main.tf, deploy/cli/deploy.sh)
DEFAULT_DAYS = 30
MAX_DAYS = 3650
DAY_SECONDS = 86_400


def expire_at(now: float, days: int) -> datetime:
    """When a record written at ``now`` (seconds since the epoch, as ``time.time()``) expires: ``days`` whole days
    later, as a timezone-aware UTC datetime (google-cloud-firestore stores it as a Timestamp, which the TTL
    policy reads; a naive datetime or a number would not expire). Raises ValueError for a ``now`` that is not
    finite or a ``days`` outside 1..MAX_DAYS."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS}: {days!r}")
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite time: {now!r}")
    return datetime.fromtimestamp(now, tz=UTC) + timedelta(days=days)
