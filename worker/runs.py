"""The records of a fanned-out run and the Protocols of the stores that keep them.

Pure: no cloud library. ``worker.fanout`` decides what to write; ``worker.adapters.firestore``
(Firestore) and ``worker.adapters.gcs`` (Cloud Storage) keep it. Every record is keyed so that
a redelivered message writes the same record again, never a second one.

A shard covers the keys ``k`` of the run's prefix with ``start <= k < stop`` (``start`` None: from
the prefix's first key; ``stop`` None: to its last), in S3's order (UTF-8 bytes, which is Python's
``str`` order for keys without lone surrogates).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

# Shard states. queued: waiting for room under the run's cap; dispatched: its message is published (or about
# to be); done: its partial is stored; failed: dead-lettered (its range was not read).
QUEUED, DISPATCHED, DONE, FAILED = "queued", "dispatched", "done", "failed"
TERMINAL = frozenset({DONE, FAILED})
# Run states. running: shards open; merging: the last shard finished and one instance is building the answer;
# answered: the answer is published (a redrive makes the run running again).
RUNNING, MERGING, ANSWERED = "running", "merging", "answered"


def shard_id_of(run_id: str, start: str | None, stop: str | None) -> str:
    """The ID of the shard of ``run_id`` that covers [start, stop): the same range, the same record."""
    text = "\x00".join([run_id, "" if start is None else "s" + start, "" if stop is None else "s" + stop])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


@dataclass
class ShardRecord:
    """One shard: a key range of the run's prefix, and what reading it found."""

    shard_id: str
    start: str | None
    stop: str | None
    state: str = QUEUED
    attempts: int = 0  # deliveries that started reading it
    partial: str | None = None  # the blob holding its partial summary (state done)
    listed: int = 0  # objects listed in its range
    parquet: int = 0  # of which Parquet objects (read or skipped for a reason of their own)
    refused: int = 0  # of which refused access
    first_refusal: str | None = None
    bytes_listed: int = 0  # sizes of the objects listed
    bytes_read: int = 0  # bytes fetched from S3 (footers in metadata mode, column chunks in full mode)
    error: str | None = None  # why it failed (state failed)
    children: list[str] = field(default_factory=list)  # shards its range was handed to
    dispatched: list[str] = field(default_factory=list)  # shards its commits dispatched (published after commit)
    seconds: float = 0.0  # time spent reading it (done)
    dispatched_at: float = 0.0  # when it was last dispatched: a dead letter of a copy sent before is stale

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ShardRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


@dataclass
class RunRecord:
    """One fanned-out job: its job, its cap, and counters kept by each shard's commit."""

    run_id: str
    job: dict[str, Any]  # the job as parsed (worker.jobs.Job.to_doc), to answer it from any instance
    created_at: float
    max_in_flight: int
    tolerated_failure_percent: float = 0.0
    state: str = RUNNING
    shards_total: int = 0  # shards created
    shards_open: int = 0  # created and not done or failed
    in_flight: int = 0  # dispatched and not done or failed
    shards_done: int = 0
    shards_failed: int = 0
    shards_retried: int = 0  # done or failed after more than one attempt
    listed: int = 0
    parquet: int = 0
    refused: int = 0
    first_refusal: str | None = None
    bytes_listed: int = 0
    bytes_read: int = 0
    merger: str | None = None  # the shard whose commit closed the run (it builds the answer)
    merge_claimed_at: float | None = None  # when a delivery of the merger last took up building the answer
    answers: int = 0  # answers published (a redrive publishes another)
    answered_at: float | None = None
    result_message_id: str | None = None
    redrives: int = 0
    updated_at: float = 0.0

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})

    def copy(self) -> RunRecord:
        return replace(self, job=dict(self.job))


@dataclass
class Change:
    """What one transaction writes: the run (or None: unchanged), shard records (created or replaced), and a
    value handed back to the caller once the transaction commits."""

    run: RunRecord | None = None
    shards: list[ShardRecord] = field(default_factory=list)
    value: Any = None


Decide = Callable[[RunRecord | None, ShardRecord | None, list[ShardRecord]], Change]
"""Given the run (None: absent), the shard asked for (None: absent or not asked for) and up to
``queued_wanted(run)`` queued shards, say what to write. Pure and repeatable: a store may call it again when a
transaction is retried."""

DISPATCH_BATCH = 100  # queued shards one commit dispatches at most (the rest go with later commits)


def queued_wanted(run: RunRecord | None) -> int:
    """How many queued shards a transaction reads for ``decide``: the room under the run's cap, plus the slot the
    commit may free (a shard finishing), at most DISPATCH_BATCH. Without the one more, a run capped at 1 would
    never dispatch again: the room is 0 before the finishing shard leaves."""
    if run is None:
        return 0
    return min(max(0, run.max_in_flight - run.in_flight) + 1, DISPATCH_BATCH)


class RunStore(Protocol):
    """Where runs and their shards are kept (Firestore). Only a ``WorkerError`` may escape: ``Retryable`` for
    faults a later attempt can get past (contention that outlasted the retries, unavailable, deadline)."""

    def transact(self, run_id: str, shard_id: str | None, decide: Decide) -> Any:
        """Read the run, the shard and up to ``queued_wanted(run)`` queued shards (any of them), call
        ``decide``, write its ``Change`` atomically, and return its ``value``. Writes nothing if ``decide``
        returns a Change with no run and no shards."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def get_shard(self, run_id: str, shard_id: str) -> ShardRecord | None: ...

    def shards(self, run_id: str, state: str | None = None) -> Iterator[ShardRecord]:
        """The run's shards (in one state, or all), streamed in shard ID order."""
        ...

    def note_attempt(self, run_id: str, shard_id: str) -> None:
        """Count one more attempt at a shard (one write to the shard, none to the run)."""
        ...


class BlobStore(Protocol):
    """Where partial summaries are kept (a Cloud Storage bucket). Only a ``WorkerError`` may escape."""

    def put_once(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` unless it exists (a create-only precondition): True if this
        call created it, False if it was there already (left untouched)."""
        ...

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        """The blob's bytes; ``NotFound`` if there is none."""
        ...


class ShardPublisher(Protocol):
    """Publishes shard messages (to SHARD_TOPIC). Only a ``WorkerError`` may escape."""

    def publish_shards(self, run_id: str, shard_ids: Sequence[str]) -> None:
        """One message per shard, every publish resolved before returning; ``Retryable`` if any failed."""
        ...
