"""The records of a fanned-out run and the Protocols of the stores that keep them.

Pure: no I/O, no cloud library. ``worker.fanout.decisions`` decides what to write; ``worker.adapters.firestore``
(Firestore) and ``worker.adapters.gcs`` (Cloud Storage) keep it. Every record is keyed so that a redelivered
message writes the same record again, never a second one.

A shard covers the keys ``k`` of the run's prefix with ``start <= k < stop`` (``start`` None: from the prefix's
first key; ``stop`` None: to its last), in S3's order (UTF-8 bytes, which is Python's ``str`` order for keys
without lone surrogates).

No document is written at a rate that grows with the run: a shard's record is written by its own deliveries
(its lease, its hand-off, its finish) and by the commit that creates or dispatches it; the run's record only when
the run opens, changes its cap, starts or advances its merge, answers, or is redriven. Progress and completion are
read from the shard records (queries), never counted in one document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol

# Shard states. queued: waiting for room under the run's cap; dispatched: its message is published (or about
# to be); done: its partial is stored; failed: its range was not read (dead-lettered, refused, or its partial lost).
QUEUED, DISPATCHED, DONE, FAILED = "queued", "dispatched", "done", "failed"
OPEN = (QUEUED, DISPATCHED)
TERMINAL = frozenset({DONE, FAILED})
# Run states. running: shards open; merging: every shard is done or failed and the answer is being built;
# answered: the answer is published (a redrive makes the run running again).
RUNNING, MERGING, ANSWERED = "running", "merging", "answered"
# Merge task states.
TASK_OPEN, TASK_DONE = "open", "done"


@dataclass
class Counts:
    """What a listing held: the counters every record that reads objects carries, added and taken away as one."""

    listed: int = 0  # objects listed
    parquet: int = 0  # of which Parquet objects (read, or skipped for a reason of their own)
    refused: int = 0  # of which refused access
    bytes_listed: int = 0  # sizes of the objects listed
    bytes_read: int = 0  # bytes fetched from S3 (footers in metadata mode, column chunks in full mode)

    def __add__(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def __sub__(self, other: Counts) -> Counts:
        return Counts(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})

    @classmethod
    def of(cls, doc: dict[str, Any] | None) -> Counts:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in (doc or {}).items() if k in names})


@dataclass
class Lease:
    """Who holds a piece of run work, until when (Unix seconds). A holder renews it while it works; every commit of
    the work checks the owner token (fencing), so a holder that outlived its lease and lost it changes nothing."""

    owner: str | None = None
    expires: float = 0.0

    def live(self, now: float) -> bool:
        return self.owner is not None and self.expires > now

    def held_by(self, token: str) -> bool:
        return self.owner is not None and self.owner == token


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
    generation: int = 0  # how often it was dispatched: a message of an older generation is a stale copy
    attempts: int = 0  # deliveries that took its lease
    lease: Lease = field(default_factory=Lease)
    partial: str | None = None  # the blob holding its partial summary (state done)
    counts: Counts = field(default_factory=Counts)
    first_refusal: str | None = None
    error: str | None = None  # why it failed (state failed)
    children: list[str] = field(default_factory=list)  # shards its range was handed to
    dispatched: list[str] = field(default_factory=list)  # shards its commits dispatched (published after commit)
    published: bool = False  # every shard in ``dispatched`` has been published
    seconds: float = 0.0  # time spent reading it (done)
    dispatched_at: float = 0.0  # when it was last dispatched
    expected_objects: int | None = None  # objects in its range, where a listing that carved it knew them
    expected_bytes: int | None = None
    republished: int = 0  # times it was sent again with no read of its own failing (sweeper, dead letters)

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ShardRecord:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in names}
        values["lease"] = Lease(**(doc.get("lease") or {}))
        values["counts"] = Counts.of(doc.get("counts"))
        return cls(**values)

    def copy(self) -> ShardRecord:
        return replace(self, lease=replace(self.lease), counts=replace(self.counts), children=list(self.children),
                       dispatched=list(self.dispatched))


@dataclass
class RunRecord:
    """One fanned-out job: its job, its cap and its merge. Written rarely (see the module's docstring)."""

    run_id: str
    job_json: str  # the job as parsed (``worker.fanout.coordinator.job_json``): one string, so no key of the user's
    # (attributes, reply_attributes) ever becomes a Firestore field name (``__x__`` is reserved)
    created_at: float
    max_in_flight: int  # shards dispatched at once (a soft cap: see ``decisions.dispatch``)
    max_in_flight_requested: int | None = None  # what the job asked, when the worker's ceiling lowered it
    tolerated_failure_percent: float = 0.0
    state: str = RUNNING
    shards_created: int = 0  # shards the run started with (hand-offs add more, counted at the merge)
    merge_round: int = 0  # one per answer being built: merge tasks are named by it
    merge_level: int = 0  # 0: the claim; 1, 2...: the level of merge tasks in progress
    merge_tasks: int = 0  # tasks at that level
    lease: Lease = field(default_factory=Lease)  # who is building the run's level or answer
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
        values = {k: v for k, v in doc.items() if k in names}
        values["lease"] = Lease(**(doc.get("lease") or {}))
        return cls(**values)

    def copy(self) -> RunRecord:
        return replace(self, lease=replace(self.lease))


@dataclass
class MergeTask:
    """One node of a run's merge tree: merges up to ``MERGE_FAN_IN`` partials (shards' or the level below's) into
    one partial, so no request merges more than a bounded number of them."""

    task_id: str
    round: int
    level: int
    index: int
    inputs: list[str]  # blob names, in order
    state: str = TASK_OPEN
    lease: Lease = field(default_factory=Lease)
    attempts: int = 0
    output: str | None = None
    lost: list[str] = field(default_factory=list)  # inputs that could not be read: "blob: reason"
    seconds: float = 0.0
    created_at: float = 0.0
    swept: int = 0

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> MergeTask:
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in doc.items() if k in names}
        values["lease"] = Lease(**(doc.get("lease") or {}))
        return cls(**values)

    def copy(self) -> MergeTask:
        return replace(self, lease=replace(self.lease), inputs=list(self.inputs), lost=list(self.lost))


def task_id_of(round_: int, level: int, index: int) -> str:
    return f"{round_:04d}-{level:02d}-{index:07d}"


@dataclass
class View:
    """What one transaction read: the run (if asked), the shards and tasks asked for (None: absent), and queued
    shards (as many as asked)."""

    run: RunRecord | None = None
    shards: dict[str, ShardRecord | None] = field(default_factory=dict)
    tasks: dict[str, MergeTask | None] = field(default_factory=dict)
    queued: list[ShardRecord] = field(default_factory=list)


@dataclass
class Change:
    """What one transaction writes: the run (or None: unchanged), shard and task records (created or replaced), and
    a value handed back to the caller once the transaction commits."""

    run: RunRecord | None = None
    shards: list[ShardRecord] = field(default_factory=list)
    tasks: list[MergeTask] = field(default_factory=list)
    value: Any = None


Decide = Callable[[View], Change]
"""Given what a transaction read, say what to write. Pure and repeatable: a store calls it again when a transaction
is retried (Firestore aborts contending transactions)."""


@dataclass(frozen=True)
class Reads:
    """What a transaction reads: the run's record or not, these shards and tasks, and up to ``queued`` queued shards
    (from a random place in ID order, so that concurrent commits mostly pick different ones)."""

    run: bool = False
    shards: tuple[str, ...] = ()
    tasks: tuple[str, ...] = ()
    queued: int = 0


class RunStore(Protocol):
    """Where runs, their shards and merge tasks are kept (Firestore). Only a ``WorkerError`` may escape:
    ``Retryable`` for faults a later attempt can get past (contention that outlasted the retries, unavailable,
    deadline)."""

    def transact(self, run_id: str, reads: Reads, decide: Decide) -> Any:
        """Read what ``reads`` names, call ``decide``, write its ``Change`` atomically, and return its ``value``."""
        ...

    def create_run(self, run: RunRecord, shards: Sequence[ShardRecord]) -> bool:
        """Create the run and its first shards at once, unless the run exists: True if this call created it."""
        ...

    def create_tasks(self, run_id: str, tasks: Sequence[MergeTask]) -> None:
        """Create merge tasks that do not exist yet (a task already there, maybe done, is left as it is)."""
        ...

    def claim_queued(self, run_id: str, most: int, claim: Callable[[ShardRecord], ShardRecord]) -> list[ShardRecord]:
        """Dispatch up to ``most`` queued shards without a transaction: each is read, changed by ``claim`` (pure) and
        written back only if nobody wrote it since the read (a last-update-time precondition, which takes no lock);
        a shard another commit took first is skipped. Returns the shards written."""
        ...

    def get_run(self, run_id: str) -> RunRecord | None: ...

    def get_shard(self, run_id: str, shard_id: str) -> ShardRecord | None: ...

    def get_task(self, run_id: str, task_id: str) -> MergeTask | None: ...

    def shards(self, run_id: str, state: str | None = None) -> Iterator[ShardRecord]:
        """The run's shards (in one state, or all), streamed in shard ID order."""
        ...

    def count_shards(self, run_id: str, states: Sequence[str]) -> int:
        """How many of the run's shards are in one of ``states`` now (one consistent query)."""
        ...

    def tasks(self, run_id: str, round_: int, level: int) -> Iterator[MergeTask]:
        """The merge tasks of one round and level, in index order."""
        ...

    def open_tasks(self, run_id: str, round_: int, level: int) -> int:
        """How many of them are not done."""
        ...

    def runs(self, states: Sequence[str]) -> Iterator[RunRecord]:
        """Every run in one of ``states`` (for the sweeper)."""
        ...


class BlobStore(Protocol):
    """Where partial summaries are kept (a Cloud Storage bucket). Only a ``WorkerError`` may escape."""

    def put_once(self, name: str, data: bytes) -> bool:
        """Create ``name`` holding ``data`` unless it exists (a create-only precondition): True if this
        call created it, False if it was there already (left untouched)."""
        ...

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        """The blob's bytes; ``NotFound`` if there is none; ``partials.PartialTooLarge`` if it holds more than
        ``max_bytes`` (the store's own bound when None), told without reading it all."""
        ...


class ShardPublisher(Protocol):
    """Publishes the run's work messages (to SHARD_TOPIC). Only a ``WorkerError`` may escape."""

    def publish_shards(self, run_id: str, shards: Sequence[tuple[str, int]]) -> None:
        """One message per (shard ID, generation), every publish resolved before returning; ``Retryable`` if any
        failed."""
        ...

    def publish_tasks(self, run_id: str, task_ids: Sequence[str]) -> None:
        """One message per merge task; ``Retryable`` if any failed."""
        ...
