"""One job over many instances: a run of shards, each a key range of the prefix, merged into one answer.

The story: a job too large for one instance becomes a *run* (``RunRecord``, keyed by the job message's ID).
Its prefix's key space is cut into ranges at the start (the keys the job already listed, and S3's "folders"
under the prefix), each range a *shard* (``ShardRecord``) published as a message of its own. A shard lists
its range; if the range holds more than SHARD_OBJECTS objects, it keeps the first ones and at once hands the
rest of its range to a new shard (so no process lists the whole prefix, and listing goes on in parallel with
reading); if reading its share outlasts SHARD_SECONDS, it hands the unread keys on, split in SPLIT_WAYS
(Dataflow's dynamic work rebalancing). Each shard stores its partial summary as a create-only blob and
commits its counters in one transaction; the commit that closes the last open shard makes the run
``merging``, and that instance merges the partials and publishes the one answer.

The decisions (``decide_*``) are pure functions of the records; the stores run them in transactions.
Duplicated and redelivered messages find their shard already terminal and change nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from worker.runs import (
    ANSWERED,
    DISPATCH_BATCH,
    DISPATCHED,
    DONE,
    FAILED,
    MERGING,
    QUEUED,
    RUNNING,
    TERMINAL,
    BlobStore,
    Change,
    RunRecord,
    RunStore,
    ShardPublisher,
    ShardRecord,
    shard_id_of,
)

log = logging.getLogger("worker")

SPLIT_WAYS = 4  # a shard out of time hands its unread keys to this many new shards
INITIAL_SHARDS_MAX = 400  # shards a run starts with (one transaction writes them all; Firestore allows 500)
FAILED_RANGES_LISTED = 100  # failed ranges an answer lists (it counts them all)
MAX_PREFIX_DEPTH = 3  # levels of "folders" looked into for the first split


# -- key ranges -----------------------------------------------------------------------------------


def after(key: str) -> str:
    """The smallest key greater than ``key``: a range starting here holds every key past ``key``."""
    return key + "\x00"


def start_after_of(start: str | None) -> str | None:
    """ListObjectsV2's StartAfter (exclusive) for a range that starts at ``start`` (inclusive): any string
    below ``start``; its prefix one character shorter is the tightest that needs no key arithmetic."""
    return start[:-1] or None if start else None


def list_range(store, prefix: str, start: str | None, stop: str | None) -> Iterator[tuple[str, int]]:
    """(key, size) of the objects of ``prefix`` with ``start <= key < stop``, in key order, page by page."""
    for key, size in store.list(prefix, start_after=start_after_of(start)):
        if start is not None and key < start:
            continue
        if stop is not None and key >= stop:
            return
        yield key, size


def ranges_from(bounds: Iterable[str], start: str | None = None, stop: str | None = None
                ) -> list[tuple[str | None, str | None]]:
    """[start, b1), [b1, b2), ..., [bn, stop) for the bounds strictly inside (start, stop), sorted, unique."""
    inside = sorted({b for b in bounds if (start is None or b > start) and (stop is None or b < stop)})
    edges: list[str | None] = [start, *inside, stop]
    return list(itertools.pairwise(edges))


def thin(bounds: Sequence[str], most: int) -> list[str]:
    """At most ``most`` of ``bounds`` (sorted), evenly spaced."""
    bounds = sorted(set(bounds))
    if len(bounds) <= most:
        return bounds
    step = len(bounds) / most
    return sorted({bounds[int(i * step)] for i in range(most)})


def first_split(keys: Sequence[str], folders: Sequence[str], *, per_shard: int, most: int = INITIAL_SHARDS_MAX
                ) -> list[tuple[str | None, str | None]]:
    """The ranges a run starts with, covering the whole prefix: one per ``per_shard`` of the ``keys`` already
    listed (the first of the prefix, in order), then S3's folders past them (each the start of a range that
    lists itself), then the rest. Always at least one range; together they cover every key exactly once."""
    bounds: list[str] = [keys[i] for i in range(per_shard, len(keys), per_shard)]
    if keys:
        bounds.append(after(keys[-1]))
    tail_start = after(keys[-1]) if keys else None
    bounds += [f for f in folders if tail_start is None or f > tail_start]
    return ranges_from(thin(bounds, most - 1))


def split_unread(keys: Sequence[str], stop: str | None, ways: int = SPLIT_WAYS) -> list[tuple[str | None, str | None]]:
    """Ranges for keys a shard could not read in time (``keys`` in order, the first of them the first unread),
    up to ``stop``: ``ways`` ranges of about equal numbers of keys."""
    if not keys:
        return []
    step = max(1, -(-len(keys) // ways))
    bounds = [keys[i] for i in range(step, len(keys), step)]
    return ranges_from(bounds, keys[0], stop)


# -- the decisions (pure: run inside a store's transaction, maybe more than once) --------------------


def dispatch(run: RunRecord, candidates: Sequence[ShardRecord], now: float = 0.0) -> list[ShardRecord]:
    """Mark as many queued ``candidates`` dispatched as the run's cap has room for; count them in flight."""
    room = min(max(0, run.max_in_flight - run.in_flight), DISPATCH_BATCH)
    sent = [s for s in candidates if s.state == QUEUED][:room]
    for shard in sent:
        shard.state = DISPATCHED
        shard.dispatched_at = now
    run.in_flight += len(sent)
    return sent


def decide_open(run: RunRecord, ranges: Sequence[tuple[str | None, str | None]]):
    """Create the run with its first shards unless it exists; the value: (created, shard IDs to publish)."""

    def decide(existing, _shard, _queued) -> Change:
        if existing is not None:
            return Change(value=(False, []))
        new = run.copy()
        shards = [ShardRecord(shard_id_of(run.run_id, a, b), a, b) for a, b in ranges]
        new.shards_total = new.shards_open = len(shards)
        sent = dispatch(new, shards, run.created_at)
        return Change(run=new, shards=shards, value=(True, [s.shard_id for s in sent]))

    return decide


@dataclass
class HandOff:
    """What a shard's early hand-off committed: its own range's end, and the shards to publish."""

    stop: str | None
    publish: list[str] = field(default_factory=list)
    terminal: bool = False


def decide_hand_off(run_id: str, shard_id: str, own_stop: str, now: float):
    """The shard keeps [start, own_stop) and hands [own_stop, stop) to a new shard, once: an attempt that finds
    the hand-off made (by an earlier delivery) adopts its end instead."""

    def decide(run, shard, queued) -> Change:
        if run is None or shard is None or shard.state in TERMINAL:
            return Change(value=HandOff(stop=None if shard is None else shard.stop, terminal=True))
        if shard.children:  # an earlier attempt handed the rest on
            return Change(value=HandOff(stop=shard.stop))
        child = ShardRecord(shard_id_of(run_id, own_stop, shard.stop), own_stop, shard.stop)
        mine = replace(shard, stop=own_stop, children=[child.shard_id], dispatched=list(shard.dispatched))
        new = run.copy()
        new.shards_total += 1
        new.shards_open += 1
        new.updated_at = now
        sent = dispatch(new, [child, *queued], now)
        mine.dispatched += [s.shard_id for s in sent]
        return Change(run=new, shards=[mine, child, *[s for s in sent if s is not child]],
                      value=HandOff(stop=own_stop, publish=[s.shard_id for s in sent]))

    return decide


@dataclass
class Outcome:
    """How one delivery of a shard ended: done (its partial stored) or failed (dead-lettered, or refused)."""

    state: str
    partial: str | None = None
    read_stop: str | None = None  # done: the end of the range this delivery read (the record's, when it began)
    covered_stop: str | None = None  # done early: the shard read [start, covered_stop); children take the rest
    handed: Sequence[tuple[str | None, str | None]] = ()
    listed: int = 0
    parquet: int = 0
    refused: int = 0
    first_refusal: str | None = None
    bytes_listed: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class Finish:
    """What a shard's commit decided: shards to publish, whether this instance builds the run's answer."""

    publish: list[str] = field(default_factory=list)
    merge: bool = False
    duplicate: bool = False
    stale: bool = False  # the delivery read another range than the record now holds: nothing recorded


def decide_finish(run_id: str, shard_id: str, outcome: Outcome, now: float):
    """Record a shard's outcome once, with its hand-offs; the commit that closes the run's last open shard
    makes it ``merging`` (exactly one does: the transaction)."""

    def decide(run, shard, queued) -> Change:
        if run is None or shard is None:
            return Change(value=Finish(duplicate=True))
        if shard.state in TERMINAL or shard.state == QUEUED:
            # Terminal: a duplicate (it may take up the merge only through decide_claim_merge).
            # Queued: a stale message from before a redrive; the shard gets a new one when dispatched.
            again = run.state == MERGING and run.merger == shard_id and shard.state in TERMINAL
            return Change(value=Finish(duplicate=True, merge=again))
        if outcome.state == DONE and (outcome.partial is None or outcome.read_stop != shard.stop):
            # Read over a range the record no longer holds (another delivery handed part of it on meanwhile),
            # or nothing stored: recording it would count keys twice or lose them. The delivery is tried again.
            return Change(value=Finish(stale=True))
        children = [ShardRecord(shard_id_of(run_id, a, b), a, b) for a, b in outcome.handed]
        mine = replace(shard, state=outcome.state, partial=outcome.partial, listed=outcome.listed,
                       parquet=outcome.parquet, refused=outcome.refused, first_refusal=outcome.first_refusal,
                       bytes_listed=outcome.bytes_listed, bytes_read=outcome.bytes_read, seconds=outcome.seconds,
                       error=outcome.error, children=[*shard.children, *(c.shard_id for c in children)],
                       dispatched=list(shard.dispatched))
        if outcome.covered_stop is not None:
            mine.stop = outcome.covered_stop
        new = run.copy()
        new.in_flight = max(0, new.in_flight - 1)
        new.shards_open += len(children) - 1
        new.shards_total += len(children)
        new.shards_done += outcome.state == DONE
        new.shards_failed += outcome.state == FAILED
        new.shards_retried += shard.attempts > 1
        new.listed += outcome.listed
        new.parquet += outcome.parquet
        new.refused += outcome.refused
        new.first_refusal = new.first_refusal or outcome.first_refusal
        new.bytes_listed += outcome.bytes_listed
        new.bytes_read += outcome.bytes_read
        new.updated_at = now
        sent = dispatch(new, [*children, *queued], now)
        mine.dispatched += [s.shard_id for s in sent]
        merge = new.shards_open == 0 and new.state == RUNNING
        if merge:
            new.state, new.merger, new.merge_claimed_at = MERGING, shard_id, now
        writes = [mine, *children, *[s for s in sent if s not in children]]
        return Change(run=new, shards=writes, value=Finish(publish=[s.shard_id for s in sent], merge=merge))

    return decide


def decide_claim_merge(shard_id: str, now: float, stale_after: float):
    """A redelivered merger message takes up building the answer only if no delivery has for ``stale_after``
    seconds (the one that did is presumed dead): two live deliveries never both publish. The value: True
    (build it now), False (the run is answered, or not this shard's to answer), None (another delivery is
    building it: try again later)."""

    def decide(run, _shard, _queued) -> Change:
        if run is None or run.state != MERGING or run.merger != shard_id:
            return Change(value=False)
        if run.merge_claimed_at is not None and now - run.merge_claimed_at < stale_after:
            return Change(value=None)
        new = run.copy()
        new.merge_claimed_at = now
        return Change(run=new, value=True)

    return decide


def decide_answered(result_message_id: str, now: float):
    """Record the run's answer as published (once per merge); the value: how many answers the run has had."""

    def decide(run, _shard, _queued) -> Change:
        if run is None or run.state != MERGING:
            return Change(value=None if run is None else run.answers)
        new = run.copy()
        new.state, new.answers, new.answered_at = ANSWERED, run.answers + 1, now
        new.result_message_id = result_message_id
        new.updated_at = now
        return Change(run=new, value=new.answers)

    return decide


REDRIVE_BATCH = 400  # failed shards one redrive transaction requeues (Firestore: 500 writes per transaction)


def decide_requeue(failed: Sequence[ShardRecord], redrives: int, now: float):
    """Redrive: put failed shards (read just before, as of the run's ``redrives`` count) back in the queue, all in
    one commit, so the run cannot close (and answer) between two of them; the run opens again. A concurrent
    redrive that committed first changed the count: this one then changes nothing. The value: shard IDs to
    publish, or None (nothing requeued)."""

    def decide(run, _shard, queued) -> Change:
        if run is None or run.redrives != redrives or run.state == MERGING or not failed:
            return Change(value=None)
        new = run.copy()
        again = [replace(s, state=QUEUED, attempts=0, children=list(s.children), dispatched=[])
                 for s in failed if s.state == FAILED]
        new.shards_failed -= len(again)
        new.shards_open += len(again)
        new.state, new.merger, new.merge_claimed_at = RUNNING, None, None
        new.redrives += 1
        new.updated_at = now
        mine = {s.shard_id for s in again}
        sent = dispatch(new, [*again, *[q for q in queued if q.shard_id not in mine]], now)
        return Change(run=new, shards=[*again, *[s for s in sent if s.shard_id not in mine]],
                      value=[s.shard_id for s in sent])

    return decide


def decide_lost(shard_id: str, reason: str, now: float):
    """A done shard whose partial cannot be read at merge time (deleted by the bucket's lifecycle, or written by
    another format version): its range is recorded failed, so the answer names it and a redrive reads it again."""

    def decide(run, shard, _queued) -> Change:
        if run is None or shard is None or shard.state != DONE:
            return Change(value=False)
        new = run.copy()
        new.shards_done -= 1
        new.shards_failed += 1
        new.listed -= shard.listed
        new.parquet -= shard.parquet
        new.refused -= shard.refused
        new.bytes_listed -= shard.bytes_listed
        new.bytes_read -= shard.bytes_read
        new.updated_at = now
        lost = replace(shard, state=FAILED, partial=None, error=reason, children=list(shard.children),
                       dispatched=list(shard.dispatched))
        return Change(run=new, shards=[lost], value=True)

    return decide


def decide_cap(max_in_flight: int, now: float):
    """Change a run's cap on shards in flight (``decide_dispatch`` then sends what the new cap has room for)."""

    def decide(run, _shard, _queued) -> Change:
        if run is None:
            return Change(value=False)
        new = run.copy()
        new.max_in_flight = max_in_flight
        new.updated_at = now
        return Change(run=new, value=True)

    return decide


def decide_dispatch(now: float):
    """Dispatch as many queued shards as the run's cap has room for; the value: their IDs (to publish)."""

    def decide(run, _shard, queued) -> Change:
        if run is None or not queued:
            return Change(value=[])
        new = run.copy()
        new.updated_at = now
        sent = dispatch(new, queued, now)
        return Change(run=new, shards=sent, value=[s.shard_id for s in sent])

    return decide


# -- the answer's run section ---------------------------------------------------------------------------


def run_section(run: RunRecord, failed: Sequence[ShardRecord], now: float, max_bytes: int = 1 << 20
                ) -> dict[str, Any]:
    """The ``fanout`` section of a run's answer (result.schema.json); the failed ranges it lists take at most
    ``max_bytes`` of JSON (keys run to 1,024 characters), the rest counted in ``failed_ranges_omitted``."""
    finished = run.shards_done + run.shards_failed
    section: dict[str, Any] = {
        "run_id": run.run_id,
        "shards": run.shards_total,
        "succeeded": run.shards_done,
        "failed": run.shards_failed,
        "retried": run.shards_retried,
        "objects_listed": run.listed,
        "objects_read": 0,  # filled in from the merged summary (files)
        "bytes_listed": run.bytes_listed,
        "bytes_read": run.bytes_read,
        "wall_seconds": round(max(0.0, now - run.created_at), 3),
        "coverage": round(run.shards_done / finished, 6) if finished else 1.0,
        "tolerated_failure_percent": run.tolerated_failure_percent,
        "redrives": run.redrives,
        "answer": run.answers + 1,
    }
    if failed:
        listed, size = [], 0
        for s in failed[:FAILED_RANGES_LISTED]:
            item = {"start": s.start, "stop": s.stop, "shard_id": s.shard_id, "error": s.error}
            size += len(json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass")) + 1
            if size > max_bytes:
                break
            listed.append(item)
        section["failed_ranges"] = listed
        if len(listed) < len(failed):
            section["failed_ranges_omitted"] = len(failed) - len(listed)
    return section


def tolerated(run: RunRecord) -> bool:
    """Whether the run's failed shards are within its tolerated-failure share."""
    finished = run.shards_done + run.shards_failed
    return run.shards_failed == 0 or (finished > 0 and 100.0 * run.shards_failed / finished
                                      <= run.tolerated_failure_percent)


def blob_name(run_id: str, shard_id: str, start: str | None, stop: str | None) -> str:
    """Where a shard's partial goes: the same range read twice (a duplicate) names the same blob."""
    digest = hashlib.sha256("\x00".join(["" if x is None else "s" + x for x in (start, stop)])
                            .encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{run_id}/{shard_id}/{digest}.partial"


# -- the engine ----------------------------------------------------------------------------------------


@dataclass
class Stores:
    """The collaborators a run needs besides S3: where runs, partials and shard messages go."""

    runs: RunStore
    blobs: BlobStore
    shards: ShardPublisher


def publish_after_commit(stores: Stores, run_id: str, shard_ids: Sequence[str]) -> None:
    """Publish shards a commit dispatched. A failure raises ``Retryable``: the message that made the commit is
    redelivered, finds its commit made, and publishes them again (``replay``)."""
    if shard_ids:
        stores.shards.publish_shards(run_id, list(shard_ids))


def replay(stores: Stores, run_id: str, shard: ShardRecord) -> None:
    """A duplicate of a shard already done: publish again what its commits dispatched and is not yet finished
    (a crash between a commit and its publishing would otherwise strand those shards)."""
    pending = [sid for sid in shard.dispatched
               if (s := stores.runs.get_shard(run_id, sid)) is not None and s.state == DISPATCHED]
    publish_after_commit(stores, run_id, pending)


def status_of(run: RunRecord, now: float | None = None) -> dict[str, Any]:
    """A run's progress (``python -m worker status``): shards, objects, bytes, rate, ETA (an estimate)."""
    now = time.time() if now is None else now
    end = run.answered_at if run.state == ANSWERED and run.answered_at else now
    elapsed = max(1e-6, end - run.created_at)
    finished = run.shards_done + run.shards_failed
    eta = None
    if run.state == RUNNING and finished:
        # Shards finish at the rate seen so far; the open ones (those known) take as long again.
        eta = round(run.shards_open * elapsed / finished, 1)
    return {
        "run_id": run.run_id, "state": run.state, "shards_total": run.shards_total, "shards_done": run.shards_done,
        "shards_failed": run.shards_failed, "shards_open": run.shards_open, "in_flight": run.in_flight,
        "max_in_flight": run.max_in_flight, "objects_listed": run.listed, "parquet": run.parquet,
        "bytes_listed": run.bytes_listed, "bytes_read": run.bytes_read, "elapsed_seconds": round(elapsed, 1),
        "objects_per_second": round(run.listed / elapsed, 1), "bytes_per_second": round(run.bytes_read / elapsed),
        "eta_seconds": eta, "answers": run.answers, "redrives": run.redrives,
        "bucket": run.job.get("bucket"), "prefix": run.job.get("prefix"), "mode": run.job.get("mode"),
    }


def redrive(stores: Stores, run_id: str, now: Callable[[], float] = time.time) -> list[str]:
    """Put a run's failed shards back to work (``python -m worker redrive``); the run answers again when they
    finish. Also publishes again every shard dispatched and not finished (one whose message a crash or an
    earlier redrive's failed publish may have lost: duplicates count once). Returns the failed shards' IDs.
    Refused (``ValueError``) while the run's answer is being built."""
    run = stores.runs.get_run(run_id)
    if run is None:
        raise LookupError(f"no run {run_id!r}")
    if run.state == MERGING:
        raise ValueError(f"run {run_id} is building its answer: redrive it once it has answered")
    failed = list(itertools.islice(stores.runs.shards(run_id, FAILED), REDRIVE_BATCH))
    if failed:
        stores.runs.transact(run_id, None, decide_requeue(failed, run.redrives, now()))
    publish_after_commit(stores, run_id, [s.shard_id for s in stores.runs.shards(run_id, DISPATCHED)])
    return [s.shard_id for s in failed]


def set_cap(stores: Stores, run_id: str, max_in_flight: int, now: Callable[[], float] = time.time) -> None:
    """Change a running run's cap on shards in flight; raising it dispatches queued shards now."""
    if not 1 <= max_in_flight <= 1000:
        raise ValueError("max_in_flight must be between 1 and 1000")
    if not stores.runs.transact(run_id, None, decide_cap(max_in_flight, now())):
        raise LookupError(f"no run {run_id!r}")
    # The store reads queued shards as many as the cap has room for: a second transaction sees the new cap.
    publish_after_commit(stores, run_id, stores.runs.transact(run_id, None, decide_dispatch(now())))


def job_doc(job) -> dict[str, Any]:
    """A job as a Firestore-ready document (worker.jobs.Job's fields)."""
    doc = dataclasses.asdict(job)
    if doc.get("columns") is not None:
        doc["columns"] = list(doc["columns"])
    return doc


def job_of(doc: dict[str, Any]):
    """The job a run document holds."""
    from worker.jobs import Job

    names = {f.name for f in dataclasses.fields(Job)}
    values = {k: v for k, v in doc.items() if k in names}
    if values.get("columns") is not None:
        values["columns"] = tuple(values["columns"])
    return Job(**values)
