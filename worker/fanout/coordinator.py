"""The coordinator: one job over many instances, from opening its run to publishing its one answer.

The story: a job too large for one instance becomes a *run* (keyed by the job message's ID). Its prefix's key space
is cut into ranges (``ranges.first_split``), each a *shard* published as a message of its own. A delivery of a shard
takes the shard's lease, lists its range (handing the rest of a long range to a new shard at once), reads its share
within its budget (handing unread keys on), stores its partial summary and commits, passing its slot under the run's
cap to a queued shard. The delivery whose commit leaves no shard open claims the run's merge; partials are merged in
a tree of merge tasks of at most ``MERGE_FAN_IN`` each (a message per task), so no request merges more than a bounded
number; the holder of the last level's lease builds the answer and publishes it.

Liveness is by lease, not by guess: every piece of work (a shard's read, a merge task, a level, the answer) is held
under a lease with an owner token, renewed while the work goes on, and every commit checks the token (fencing). A
delivery that finds another's live lease acknowledges its message (no attempt spent); a lease that expires with its
work unfinished is taken over by the next delivery, or found by the sweeper (``sweep``), which runs on a schedule
even when no message does.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from worker.errors import Incomplete, Internal, NotFound, Unavailable, WorkerError
from worker.fanout import decisions as d
from worker.fanout.ranges import (
    after,
    blob_name,
    first_split,
    list_range,
    sizes_of,
    split_unread,
)
from worker.fanout.records import (
    ANSWERED,
    DISPATCHED,
    DONE,
    FAILED,
    MERGING,
    OPEN,
    QUEUED,
    RUNNING,
    TASK_DONE,
    BlobStore,
    Counts,
    Reads,
    RunRecord,
    RunStore,
    ShardPublisher,
    ShardRecord,
)

log = logging.getLogger("worker")

MAX_REASON = 300  # characters of a failed range's reason
FAILED_RANGES_LISTED = 100  # failed ranges an answer lists (it counts them all)
REDRIVE_BATCH = 400  # failed shards one redrive transaction requeues (Firestore: 500 writes per transaction)
MEASURE_PAGES = 5  # listing pages a dead-lettered range is measured with (beyond: its size is not known)
MAX_SWEEPS = 3  # times a shard is sent again (sweeper, dead letters) before its range is failed
READS_BEFORE_FAILING = 3  # a dead-lettered shard is failed only after this many reads of it failed (took its lease)


@dataclass
class Stores:
    """The collaborators a run needs besides S3: where runs, partials and work messages go."""

    runs: RunStore
    blobs: BlobStore
    shards: ShardPublisher


class Host(Protocol):
    """What the coordinator needs of the worker it runs in (``worker.service.Worker`` implements it)."""

    settings: Any
    storage: Any

    def read_objects(self, store: Any, listed: Any, job: Any, *, deadline: float, tally: Any) -> Any:
        """Summarize the listed objects (``summarize_listing`` with the worker's settings)."""
        ...

    def turn(self, full: bool, *, what: str, step: str, fields: dict) -> AbstractContextManager[None]: ...

    def send(self, result: dict, job: Any) -> tuple[dict, str]: ...

    def incident(self, exc: BaseException, stage: str, ref: Any) -> Internal: ...

    def answer_of(self, job: Any, summary: Any, tally: Any, timings: dict[str, float]) -> dict: ...


def job_json(job) -> str:
    """A job as one JSON string for its run's record (no key of the user's becomes a Firestore field name)."""
    import dataclasses

    doc = dataclasses.asdict(job)
    if doc.get("columns") is not None:
        doc["columns"] = list(doc["columns"])
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":"))


def job_of(text: str):
    """The job a run's record holds."""
    import dataclasses

    from worker.jobs import Job

    doc = json.loads(text)
    names = {f.name for f in dataclasses.fields(Job)}
    values = {k: v for k, v in doc.items() if k in names}
    if values.get("columns") is not None:
        values["columns"] = tuple(values["columns"])
    return Job(**values)


class _HandBack(Exception):
    """A shard's read could not start in time on this instance (full-mode turns): handed back, no attempt spent."""


@contextlib.contextmanager
def _handing_back():
    """Waiting for a full-mode turn that timed out (the instance's other full-mode reads took it) is a hand-back."""
    try:
        yield
    except Unavailable as e:
        if str((e.details or {}).get("step", "")).startswith("waiting for a full-mode turn"):
            raise _HandBack(e.message) from None
        raise


class _Lease:
    """Keeps a lease renewed from a background thread while the work goes on; ``lost`` once a renewal finds it is
    no longer this holder's (a renewal that fails for a transient fault is tried again at the next beat)."""

    def __init__(self, renew: Callable[[], bool], seconds: float):
        self._renew, self._every = renew, max(0.05, seconds / 3)
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lease", daemon=True)

    def __enter__(self) -> _Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._every):
            try:
                if not self._renew():
                    self.lost.set()
                    return
            except WorkerError as e:
                log.warning("lease renewal failed: %s", e.message)


class Coordinator:
    """Runs of shards over the stores; ``host`` reads objects and publishes answers."""

    def __init__(self, host: Host, stores: Stores, clock: Callable[[], float] = time.time):
        self.host = host
        self.stores = stores
        self.runs = stores.runs
        self.clock = clock

    @property
    def settings(self):
        return self.host.settings

    @property
    def lease_seconds(self) -> float:
        return float(self.settings.lease_seconds)

    def _room(self, run: RunRecord) -> int:
        """Room under the run's cap, from a count of the shards dispatched now (one query, no counter document)."""
        return max(0, run.max_in_flight - self.runs.count_shards(run.run_id, [DISPATCHED]))

    # -- opening -----------------------------------------------------------------------------------------

    def open_run(self, job, store, head: list[tuple[str, int]], folders: list[str]) -> None:
        """Make the job a run: its first shards from the keys listed so far and S3's folders under the prefix."""
        spec = job.spec.get("fan_out") or {}
        requested = spec.get("max_in_flight")
        ceiling = self.settings.fanout_max_in_flight
        cap = min(requested, ceiling) if requested is not None else ceiling
        ranges = first_split([k for k, _ in head], folders, per_shard=self.settings.shard_objects)
        # The keys listed so far are every key before the last one's successor: ranges past it are not measured.
        sizes = sizes_of(ranges, head, known_until=after(head[-1][0]) if head else "")
        shards = d.new_shards(job.message_id, [(a, b, n, s) for (a, b), (n, s) in zip(ranges, sizes, strict=True)])
        now = self.clock()
        run = RunRecord(run_id=job.message_id, job_json=job_json(job), created_at=now, max_in_flight=cap,
                        max_in_flight_requested=requested if requested is not None and requested > cap else None,
                        tolerated_failure_percent=float(spec.get("tolerated_failure_percent", 0)),
                        shards_created=len(shards), updated_at=now)
        sent = d.dispatch(shards, cap, now)
        created = self.runs.create_run(run, shards)
        if created:
            publish = d.ids(sent)
        else:  # a redelivered job message: the run exists; publish what may not have gone out
            publish = [(s.shard_id, s.generation) for s in self.runs.shards(run.run_id, DISPATCHED)]
        self._publish(run.run_id, publish)
        log.info("job fanned out", extra={"fields": {"run_id": run.run_id, "shards": len(shards), "created": created,
                                                     "max_in_flight": cap}})

    def _dispatch(self, run_id: str, room: int) -> list[tuple[str, int]]:
        """Dispatch up to ``room`` queued shards (at most DISPATCH_BATCH) by precondition writes, which take no lock:
        of two commits that pick the same shard, the second's write fails and it tries another. The value: the
        (shard ID, generation) of each, to publish."""
        return d.ids(self.runs.claim_queued(run_id, min(room, d.DISPATCH_BATCH), d.claim(self.clock())))

    def _publish(self, run_id: str, shards: Sequence[tuple[str, int]]) -> None:
        """Publish shards a commit dispatched. A failure raises ``Retryable``: the message that made the commit is
        redelivered, finds its commit made and the shards unpublished, and publishes them again."""
        if shards:
            self.stores.shards.publish_shards(run_id, list(shards))

    # -- a shard's delivery --------------------------------------------------------------------------------

    def handle_shard(self, run_id: str, shard_id: str, generation: int | None, *, dead: bool) -> None:
        """One shard message: read its range (or, dead-lettered, record it failed), commit, and close the run if
        this commit left no shard open. Raises only ``Retryable``."""
        fields = {"run_id": run_id, "shard_id": shard_id, "generation": generation}
        run = self.runs.get_run(run_id)
        shard = self.runs.get_shard(run_id, shard_id)
        if run is None or shard is None:
            log.warning("shard message of no known run: dropped", extra={"fields": fields})
            return
        if shard.state in (DONE, FAILED):
            self._replay(run_id, shard)
            self._close_if_done(run)
            return
        if dead:
            self._dead_letter(run, shard, generation, fields)
            return
        token = secrets.token_hex(8)
        leased = self.runs.transact(run_id, Reads(shards=(shard_id,)),
                                    d.lease_shard(shard_id, generation, token, self.clock(), self.lease_seconds))
        if leased.verdict == "done":
            self._replay(run_id, leased.shard)
            self._close_if_done(run)
            return
        if leased.verdict == "busy":
            # Another delivery holds a live lease: alive and reading, or killed (its lease runs out within
            # LEASE_SECONDS). Pub/Sub brings this copy back later, when a dead holder's lease has run out.
            raise Unavailable(f"shard {shard_id} of run {run_id} is held by another delivery for "
                              f"{max(0.0, leased.shard.lease.expires - self.clock()):.0f}s more; try again later",
                              details={"step": "taking a shard's lease"})
        if leased.verdict != "leased":
            # stale: an older copy, or queued again by a redrive (it gets a new message when dispatched).
            log.info("shard message acknowledged: %s", leased.verdict, extra={"fields": fields})
            return
        shard = leased.shard
        self._replay(run_id, shard)  # what an earlier attempt's hand-off dispatched may not have gone out
        read = False
        try:
            with _Lease(lambda: self.runs.transact(run_id, Reads(shards=(shard_id,)), d.renew_shard(
                    shard_id, token, self.clock(), self.lease_seconds)), self.lease_seconds) as lease:
                outcome = self._read_shard(run, shard, token, lease)
            # (the renewals stopped: they would only contend with the commit for the shard's record)
            if outcome is None:  # the lease was lost (this delivery outlived it): the new holder reads it
                log.warning("shard lease lost while reading: nothing recorded", extra={"fields": fields})
                return
            committing = time.monotonic()
            read = True
            finished = self._finish(run, shard_id, outcome, token=token)
            commit_ms = round((time.monotonic() - committing) * 1000, 1)
        except _HandBack as e:
            # The instance was busy with other full-mode reads: hand the shard back without spending one of this
            # message's delivery attempts (its lease given up, a new copy of its message sent; this one acked).
            self.runs.transact(run_id, Reads(shards=(shard_id,)), d.release_shard(shard_id, token))
            self._publish(run_id, [(shard_id, shard.generation)])
            log.warning("shard handed back: %s", e, extra={"fields": fields})
            return
        except WorkerError as e:
            if e.retryable:
                with contextlib.suppress(WorkerError):
                    self.runs.transact(run_id, Reads(shards=(shard_id,)), d.release_shard(shard_id, token,
                                                                                          uncount=read))
            raise
        if not finished.recorded:
            log.warning("shard not recorded: %s", finished.why, extra={"fields": fields})
            return
        log.info("shard committed", extra={"fields": fields | {"state": outcome.state, "commit_ms": commit_ms,
                                                               "published": len(finished.publish)}})
        self._close_if_done(run)

    def _finish(self, run: RunRecord, shard_id: str, outcome: d.Outcome, *, token: str | None = None,
                generation: int | None = None) -> d.Finish:
        """Record a shard's outcome (a transaction on its own records only: no other delivery's commit contends
        with it), publish the children it dispatched, then pass its slot on to queued shards (``_dispatch``). If
        that fails, nothing is lost but time: the next commit, or the sweep, counts the room again."""
        room = self._room(run)
        finished = self.runs.transact(run.run_id, Reads(shards=(shard_id,)), d.finish(
            run.run_id, shard_id, outcome, self.clock(), room, token=token, generation=generation))
        if not finished.recorded:
            return finished
        self._published(run.run_id, shard_id, finished.publish)
        left = room + 1 - len(finished.publish)
        if left > 0:
            try:
                sent = self._dispatch(run.run_id, left)
                if sent:
                    self.runs.transact(run.run_id, Reads(shards=(shard_id,)), d.passed_on(shard_id, sent))
            except WorkerError as e:
                if not e.retryable:
                    raise
                log.warning("passing a shard's slot on failed: %s", e.message,
                            extra={"fields": {"run_id": run.run_id, "shard_id": shard_id}})
            else:
                self._published(run.run_id, shard_id, sent)
        return finished

    def _published(self, run_id: str, shard_id: str, publish: Sequence[tuple[str, int]]) -> None:
        if publish:
            self._publish(run_id, publish)
            self.runs.transact(run_id, Reads(shards=(shard_id,)), d.mark_published(shard_id))

    def _replay(self, run_id: str, shard: ShardRecord | None) -> None:
        """Publish again what the shard's commits dispatched, if that may not have gone out (a crash, or a failed
        publish, between a commit and its publishing): only shards still dispatched and not yet leased."""
        if shard is None or shard.published or not shard.dispatched:
            return
        pending = [(s.shard_id, s.generation) for sid in shard.dispatched
                   if (s := self.runs.get_shard(run_id, sid)) is not None and s.state == DISPATCHED
                   and s.attempts == 0]
        self._published(run_id, shard.shard_id, pending)

    def _dead_letter(self, run: RunRecord, shard: ShardRecord, generation: int | None, fields: dict) -> None:
        """A shard message dead-lettered. A range is failed only by faults of its own: a stale copy changes nothing;
        while a delivery holds the lease the copy comes back later (the holder may be dead); a shard whose attempts
        went on 429s, busy leases or contention (fewer than ``READS_BEFORE_FAILING`` reads taken) is sent again as a
        new generation (at most ``MAX_SWEEPS`` times); only then is its range recorded failed."""
        now = self.clock()
        if shard.state == QUEUED or (generation is not None and generation != shard.generation):
            log.warning("dead letter of a shard sent again since: dropped", extra={"fields": fields})
            return
        if shard.lease.live(now):
            raise Unavailable(f"dead letter of shard {shard.shard_id}, which a delivery holds for "
                              f"{shard.lease.expires - now:.0f}s more; try again later",
                              details={"step": "recording a dead letter"})
        if shard.attempts < READS_BEFORE_FAILING and shard.republished < MAX_SWEEPS:
            again = self.runs.transact(run.run_id, Reads(shards=(shard.shard_id,)),
                                       d.redispatch(shard.shard_id, now, shard.generation))
            if again is not None:
                log.warning("dead-lettered shard sent again: its reads did not fail", extra={"fields": fields | {
                    "reads": shard.attempts, "generation": again[1]}})
                self._publish(run.run_id, [again])
            return
        objects, size = self._measure(run, shard)
        outcome = d.Outcome(FAILED, error=f"dead-lettered after {shard.attempts} read(s)", measured=(objects, size))
        finished = self._finish(run, shard.shard_id, outcome, generation=shard.generation)
        if not finished.recorded:
            log.warning("dead letter not recorded: %s", finished.why, extra={"fields": fields})
            return
        log.warning("shard failed: dead-lettered", extra={"fields": fields | {"objects": objects}})
        self._close_if_done(run)

    def _measure(self, run: RunRecord, shard: ShardRecord) -> tuple[int | None, int | None]:
        """(objects, bytes) in a failed shard's range: known from the listing that carved it, else listed now (a few
        pages at most); (None, None) when that cannot be had: the answer then says the range was never listed."""
        if shard.expected_objects is not None:
            return shard.expected_objects, shard.expected_bytes
        job = job_of(run.job_json)
        try:
            self.host.storage.ensure_credentials()
            store = self.host.storage.objects(job.bucket, job.job_id)
            found = list(itertools.islice(list_range(store, job.prefix, shard.start, shard.stop),
                                          MEASURE_PAGES * 1000 + 1))
        except WorkerError as e:
            log.warning("a failed range could not be listed: %s", e.message)
            return None, None
        if len(found) > MEASURE_PAGES * 1000:
            return None, None
        return len(found), sum(size for _, size in found)

    def _read_shard(self, run: RunRecord, shard: ShardRecord, token: str, lease: _Lease) -> d.Outcome | None:
        """Read one shard's range within its budget; a permanent failure is the shard's (recorded failed).
        None: the lease was lost (nothing to record)."""
        host, settings = self.host, self.settings
        job = job_of(run.job_json)
        fields = {"job_id": job.job_id, "run_id": run.run_id, "shard_id": shard.shard_id}
        started = time.monotonic()
        phases: dict[str, float] = {}
        try:
            host.storage.ensure_credentials()
            store = host.storage.objects(job.bucket, job.job_id)
            listing = list_range(store, job.prefix, shard.start, shard.stop)
            with _phase(phases, "listing"):
                own = list(itertools.islice(listing, settings.shard_objects))
                more = bool(own) and next(listing, None) is not None
            stop = shard.stop
            if more:
                # More than a shard's share: hand the rest of the range on now, so it is listed (and read) in
                # parallel with this share, rather than after it.
                cut = after(own[-1][0])
                with _phase(phases, "hand_off"):
                    # The child is dispatched if the run has room; queued ones wait for slots passed on.
                    handed = self.runs.transact(run.run_id, Reads(shards=(shard.shard_id,)), d.hand_off(
                        run.run_id, shard.shard_id, token, cut, self._room(run), self.clock()))
                    if handed.lost:
                        return None
                    self._published(run.run_id, shard.shard_id, handed.publish)
                stop = handed.stop
                if stop != cut:  # an earlier delivery cut elsewhere: its cut stands
                    own = list(list_range(store, job.prefix, shard.start, stop))
            unread: list[str] = []
            # The delivery's own deadline bounds the budget too (a full-mode shard may have waited for its turn),
            # with a margin to store the partial and commit.
            hard = started + settings.job_deadline_seconds - settings.shard_seconds / 4
            budget = [0.0, 0.0]  # reading started, budget ends

            def within_budget() -> Iterator[tuple[str, int]]:
                for n, item in enumerate(own):
                    if lease.lost.is_set():  # another delivery holds the shard now: stop taking keys
                        return
                    now = time.monotonic()
                    if now > budget[1]:
                        # Past the budget, hand on what would take more than a quarter of it again at the rate
                        # so far: a few objects short of the end are read here (a shard per object costs more),
                        # unless that would run past the deadline.
                        rate = n / max(now - budget[0], 1e-3)
                        left = len(own) - n
                        late = now + left / max(rate, 1e-9) > hard
                        if (left >= 2 and (late or left > rate * settings.shard_seconds / 4)) or now > hard:
                            unread.append(item[0])
                            return
                    yield item

            from worker.service import Tally

            tally = Tally()
            full = job.mode == "full"
            with _phase(phases, "reading"), _handing_back(), host.turn(
                    full, what="read(s)", fields=fields, step="waiting for a full-mode turn (reading a shard)"):
                budget[0] = time.monotonic()  # the budget starts with the turn, and ends by the deadline
                budget[1] = min(budget[0] + settings.shard_seconds, hard)
                if hard - budget[0] < settings.shard_seconds / 2:
                    raise _HandBack(f"shard {shard.shard_id} waited for a full-mode turn until too little of its "
                                    f"{settings.job_deadline_seconds}s deadline was left")
                summary = host.read_objects(store, within_budget(), job, tally=tally,
                                            deadline=started + settings.job_deadline_seconds)
            if lease.lost.is_set():
                return None
            covered = unread[0] if unread else None
            rest = [(k, size) for k, size in own if covered is not None and k >= covered]
            handed_on = split_unread([k for k, _ in rest], stop) if covered is not None else []
            sized = [(a, b, n, size) for (a, b), (n, size)
                     in zip(handed_on, sizes_of(handed_on, rest, known_until=None), strict=True)]
            name = blob_name(run.run_id, shard.shard_id, shard.start, covered if covered is not None else stop)
            from worker import partials

            encoded = partials.encode(summary)
            if len(encoded) > settings.partial_max_bytes:  # the merge would refuse it: fail the range now, saying why
                return d.Outcome(FAILED, error=f"the range's partial summary is {len(encoded)} bytes, over "
                                               f"PARTIAL_MAX_BYTES ({settings.partial_max_bytes}): read it with "
                                               "fewer columns, or a larger PARTIAL_MAX_BYTES")
            with _phase(phases, "storing"):
                self.stores.blobs.put_once(name, encoded)
            counts = Counts(listed=tally.listed, parquet=tally.parquet, refused=tally.refused,
                            bytes_listed=sum(size for k, size in own if covered is None or k < covered),
                            bytes_read=summary.bytes)
            log.info("shard read", extra={"fields": fields | {
                "objects": tally.listed, "handed_on": len(handed_on), "unread": len(own) - tally.listed,
                "timings_ms": {k: round(v, 1) for k, v in phases.items()}}})
            return d.Outcome(DONE, partial=name, read_stop=stop, covered_stop=covered, handed=sized, counts=counts,
                             first_refusal=tally.first_refusal, seconds=time.monotonic() - started)
        except _HandBack:
            raise
        except WorkerError as e:
            if e.retryable:
                log.warning("shard will be retried: %s", e.message, extra={"fields": fields | {"code": e.code}})
                raise
            log.warning("shard failed: %s", e.message, extra={"fields": fields | {"code": e.code}})
            return d.Outcome(FAILED, error=f"{e.code}: {e.message}"[:MAX_REASON])
        except Exception as e:  # noqa: BLE001 - a bug costs this shard (recorded failed, redrivable), not the run
            incident = host.incident(e, "reading a shard", job)
            return d.Outcome(FAILED, error=f"internal: {incident.message}"[:MAX_REASON])

    # -- closing and merging -------------------------------------------------------------------------------

    def _close_if_done(self, run: RunRecord) -> None:
        """After a commit that made a shard done or failed: if no shard is open, claim the merge (of the deliveries
        that see none open, the first to commit); a merge whose holder's lease expired is taken over."""
        current = self.runs.get_run(run.run_id)
        if current is None or current.state == ANSWERED:
            return
        if current.state == RUNNING and self.runs.count_shards(run.run_id, list(OPEN)):
            return
        if current.state == MERGING and current.lease.live(self.clock()):
            if current.merge_level == 0:
                # The closing delivery is making the merge's first level (or the answer) and may have died doing
                # it: this copy comes back later and takes over once that lease has run out.
                raise Unavailable(f"run {run.run_id}: another delivery is building its merge; try again later",
                                  details={"step": "merging a run"})
            return
        self._claim(run.run_id)

    def _claim(self, run_id: str) -> None:
        token = secrets.token_hex(8)
        claim = self.runs.transact(run_id, Reads(run=True), d.claim_merge(token, self.clock(), self.lease_seconds))
        if claim.verdict not in ("claimed", "resumed"):
            return
        self._build(claim.run, token)

    def _holding_run(self, run_id: str, token: str) -> _Lease:
        return _Lease(lambda: self.runs.transact(run_id, Reads(run=True), d.renew_run(
            token, self.clock(), self.lease_seconds)), self.lease_seconds)

    def _build(self, run: RunRecord, token: str) -> None:
        """Holding the run's lease: make the next level of merge tasks, or (few enough inputs) the answer."""
        run_id = run.run_id
        try:
            with self._holding_run(run_id, token) as lease:
                if run.merge_level == 0:
                    if self.runs.count_shards(run_id, list(OPEN)):  # a redrive raced the claim
                        self.runs.transact(run_id, Reads(run=True), d.release_run(token, reopen=True))
                        return
                    inputs = [s.partial for s in self.runs.shards(run_id, DONE) if s.partial]
                else:
                    tasks = list(self.runs.tasks(run_id, run.merge_round, run.merge_level))
                    left = [t for t in tasks if t.state != TASK_DONE]
                    if left:  # taken over mid-level: publish again the tasks nobody holds
                        now = self.clock()
                        self._publish_tasks(run_id, [t.task_id for t in left if not t.lease.live(now)])
                        self.runs.transact(run_id, Reads(run=True),
                                           d.set_level(token, run.merge_level, len(tasks), now))
                        return
                    inputs = [t.output for t in tasks if t.output]
                fan_in = self.settings.merge_fan_in
                if len(inputs) <= fan_in:
                    self._answer(run, token, inputs, lease)
                    return
                level = run.merge_level + 1
                planned = d.plan_level(run.merge_round, level, inputs, fan_in, self.clock())
                self.runs.create_tasks(run_id, planned)
                if self.runs.transact(run_id, Reads(run=True), d.set_level(token, level, len(planned), self.clock())):
                    self._publish_tasks(run_id, [t.task_id for t in planned])
                    log.info("merge level planned", extra={"fields": {"run_id": run_id, "level": level,
                                                                      "tasks": len(planned), "inputs": len(inputs)}})
        except WorkerError as e:
            if e.retryable:
                with contextlib.suppress(WorkerError):
                    self.runs.transact(run_id, Reads(run=True), d.release_run(token))
                raise
            self._answer_failure(run, token, e)
        except Exception as e:  # noqa: BLE001 - every run ends: a bug while merging answers internal
            self._answer_failure(run, token, e)

    def _publish_tasks(self, run_id: str, task_ids: Sequence[str]) -> None:
        if task_ids:
            self.stores.shards.publish_tasks(run_id, list(task_ids))

    def handle_merge(self, run_id: str, task_id: str) -> None:
        """One merge task's message: merge its inputs into one partial under the task's lease; the delivery that
        finishes a level's last task builds the next level (or the answer). Raises only ``Retryable``."""
        fields = {"run_id": run_id, "task_id": task_id}
        token = secrets.token_hex(8)
        leased = self.runs.transact(run_id, Reads(tasks=(task_id,)),
                                    d.lease_task(task_id, token, self.clock(), self.lease_seconds))
        if leased == "busy":  # as for a shard: the holder may be dead; its lease runs out within LEASE_SECONDS
            raise Unavailable(f"merge task {task_id} of run {run_id} is held by another delivery; try again later",
                              details={"step": "taking a merge task's lease"})
        if isinstance(leased, str):
            log.info("merge task message acknowledged: %s", leased, extra={"fields": fields})
            if leased == "done":
                task = self.runs.get_task(run_id, task_id)
                if task is not None:
                    self._advance(run_id, task.round, task.level)
            return
        task = leased
        from worker import partials
        from worker.summary import SummaryBuilder

        started = time.monotonic()
        try:
            with _Lease(lambda: self.runs.transact(run_id, Reads(tasks=(task_id,)), d.renew_task(
                    task_id, token, self.clock(), self.lease_seconds)), self.lease_seconds) as lease:
                builder, lost = SummaryBuilder(), []
                for name in task.inputs:
                    if lease.lost.is_set():
                        return
                    try:
                        builder.add(self._partial(name))
                    except (NotFound, partials.CorruptPartial) as e:
                        lost.append(self._lost_input(run_id, task.level == 1, name, e))
                output = f"{run_id}/merge/{task_id}.partial"
                self.stores.blobs.put_once(output, partials.encode(builder.build()))
                done = self.runs.transact(run_id, Reads(tasks=(task_id,)), d.task_done(
                    task_id, token, output, lost, time.monotonic() - started))
        except WorkerError as e:
            if e.retryable:
                with contextlib.suppress(WorkerError):
                    self.runs.transact(run_id, Reads(tasks=(task_id,)), d.release_task(task_id, token))
            raise
        log.info("merge task done", extra={"fields": fields | {"inputs": len(task.inputs), "recorded": done,
                                                               "ms": round((time.monotonic() - started) * 1000)}})
        self._advance(run_id, task.round, task.level)

    def _partial(self, name: str):
        """A stored partial summary, read and decoded within PARTIAL_MAX_BYTES (``NotFound``, ``CorruptPartial``)."""
        from worker import partials

        bound = self.settings.partial_max_bytes
        return partials.decode(self.stores.blobs.get(name, max_bytes=bound), max_bytes=bound)

    def _lost_input(self, run_id: str, of_shard: bool, name: str, error: WorkerError) -> str:
        """An input that cannot be read; a shard's partial (gone by the bucket's lifecycle, or written by another
        format version) has its range recorded failed, so the answer counts it unread and a redrive reads it."""
        reason = f"partial summary lost: {error.message}"[:MAX_REASON]
        if of_shard:
            shard_id = name.split("/")[-2]
            self.runs.transact(run_id, Reads(shards=(shard_id,)), d.lost_partial(shard_id, reason))
        return f"{name}: {reason}"

    def _advance(self, run_id: str, round_: int, level: int) -> None:
        if self.runs.open_tasks(run_id, round_, level):
            return
        token = secrets.token_hex(8)
        run = self.runs.transact(run_id, Reads(run=True), d.advance(round_, level, token, self.clock(),
                                                                    self.lease_seconds))
        if run is not None:
            self._build(run, token)

    # -- the answer ------------------------------------------------------------------------------------------

    def _answer(self, run: RunRecord, token: str, inputs: Sequence[str], lease: _Lease) -> None:
        """Merge the last inputs, build the run's one answer and publish it, holding the run's lease."""
        from worker import partials
        from worker.service import Tally
        from worker.summary import SummaryBuilder

        job = job_of(run.job_json)
        builder = SummaryBuilder()
        lost = []
        for name in inputs:
            try:
                builder.add(self._partial(name))
            except (NotFound, partials.CorruptPartial) as e:
                lost.append(self._lost_input(run.run_id, run.merge_level == 0, name, e))
        if lost and run.merge_level >= 1:
            # Merge tasks' outputs: the worker's own blobs, gone or unreadable only by a fault no redrive mends.
            raise RuntimeError("merged partials lost: " + "; ".join(lost)[:500])
        summary = builder.build()
        totals = self.totals(run.run_id)  # after lost shard partials were recorded failed
        now = self.clock()
        section = run_section(run, totals, now, max_bytes=self.settings.result_max_bytes // 4)
        section["objects_read"] = summary.files
        timings = {"total": (now - run.created_at) * 1000.0}
        tally = Tally(listed=totals.done.listed, parquet=totals.done.parquet, refused=totals.done.refused,
                      first_refusal=totals.first_refusal)
        if totals.failed and (not tolerated(run, totals) or totals.done_shards == 0 or totals.done.parquet == 0):
            # Not tolerated, or no Parquet read at all: "none under the prefix" could be false (the failed ranges).
            result = _error_result(job, Incomplete(
                f"{totals.failed} of {totals.shards} key ranges of the run were not read ({_not_read(totals)}; "
                f"tolerated: {run.tolerated_failure_percent:g}% of objects); fanout.failed_ranges names them, and "
                f"`python -m worker redrive {run.run_id}` reads only those again",
                details={"run_id": run.run_id, "failed": totals.failed, "shards": totals.shards}), timings)
        else:
            try:
                result = self.host.answer_of(job, summary, tally, timings)
            except WorkerError as e:
                result = _error_result(job, e, timings)
        result["fanout"] = section
        self._publish_answer(run, token, job, result, lease)

    def _publish_answer(self, run: RunRecord, token: str, job, result: dict, lease: _Lease) -> None:
        """Publish, fenced: only while this delivery holds the run's lease; then record it. A holder that crashes
        between the two leaves the run merging; whoever takes it over publishes again (the same ``run_id``)."""
        current = self.runs.get_run(run.run_id)
        if lease.lost.is_set() or current is None or not current.lease.held_by(token):
            log.warning("run lease lost before publishing: another holder answers",
                        extra={"fields": {"run_id": run.run_id}})
            return
        _, message_id = self.host.send(result, job)
        answers = self.runs.transact(run.run_id, Reads(run=True), d.answered(token, message_id, self.clock()))
        log.info("run answered", extra={"fields": {"run_id": run.run_id, "answer": answers,
                                                   "status": result["status"]}})

    def _answer_failure(self, run: RunRecord, token: str, error: BaseException) -> None:
        """Every run ends: a permanent fault or a bug while merging answers the run (``internal`` with an incident
        ID for a bug), so it never stays merging."""
        job = job_of(run.job_json)
        if not isinstance(error, WorkerError) or isinstance(error, Internal):
            error = error if isinstance(error, Internal) else self.host.incident(error, "merging a run", job)
        now = self.clock()
        result = _error_result(job, error, {"total": (now - run.created_at) * 1000.0})
        with contextlib.suppress(Exception):
            result["fanout"] = run_section(run, self.totals(run.run_id), now,
                                           max_bytes=self.settings.result_max_bytes // 4)
        current = self.runs.get_run(run.run_id)
        if current is None or not current.lease.held_by(token):
            return
        _, message_id = self.host.send(result, job)
        self.runs.transact(run.run_id, Reads(run=True), d.answered(token, message_id, self.clock()))

    def totals(self, run_id: str) -> Totals:
        """What the run's shards say, summed from their records (one pass): nothing is counted in one document."""
        totals = Totals()
        for shard in self.runs.shards(run_id):
            totals.shards += 1
            totals.retried += shard.attempts > 1
            if shard.state == DONE:
                totals.done_shards += 1
                totals.done += shard.counts
                totals.first_refusal = totals.first_refusal or shard.first_refusal
            elif shard.state == FAILED:
                totals.failed += 1
                if len(totals.failed_ranges) < FAILED_RANGES_LISTED:
                    totals.failed_ranges.append(shard)
                if shard.expected_objects is None:
                    totals.unmeasured += 1
                else:
                    totals.failed_objects += shard.expected_objects
                    totals.failed_bytes += shard.expected_bytes or 0
            else:
                totals.open += 1
        return totals

    # -- the sweeper -----------------------------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Find runs that stopped making progress (every message for them lost, a holder dead) and set them going:
        shards dispatched long ago with no live lease are published again (a new generation; after ``MAX_SWEEPS``
        their range is failed), queued shards are dispatched into free room, a run with nothing open is closed, and
        merge tasks nobody holds are published again. Runs on a schedule (deploy/: Cloud Scheduler), so a run ends
        within ``SWEEP_STALL_SECONDS`` plus the schedule's period of its last progress."""
        report = {"runs": 0, "republished": 0, "failed": 0, "dispatched": 0, "closed": 0, "tasks": 0}
        stall = float(self.settings.sweep_stall_seconds)
        for run in self.runs.runs([RUNNING, MERGING]):
            report["runs"] += 1
            now = self.clock()
            try:
                if run.state == RUNNING:
                    self._sweep_shards(run, now, stall, report)
                elif not run.lease.live(now):
                    if run.merge_level == 0 or not self.runs.open_tasks(run.run_id, run.merge_round, run.merge_level):
                        report["closed"] += 1
                        self._claim(run.run_id)
                    else:
                        self._sweep_tasks(run, now, stall, report)
            except WorkerError as e:
                log.warning("sweeping run %s failed: %s", run.run_id, e.message)
        log.info("sweep done", extra={"fields": report})
        return report

    def _sweep_shards(self, run: RunRecord, now: float, stall: float, report: dict[str, int]) -> None:
        for shard in self.runs.shards(run.run_id, DISPATCHED):
            quiet_since = max(shard.dispatched_at, shard.lease.expires)
            if shard.lease.live(now) or now - quiet_since < stall:
                continue
            if shard.republished >= MAX_SWEEPS:
                outcome = d.Outcome(FAILED, error=f"no delivery made progress after {shard.republished} republications "
                                                  f"({shard.attempts} attempt(s))")
                if self._finish(run, shard.shard_id, outcome, generation=shard.generation).recorded:
                    report["failed"] += 1
                continue
            again = self.runs.transact(run.run_id, Reads(shards=(shard.shard_id,)), d.redispatch(shard.shard_id, now))
            if again is not None:
                report["republished"] += 1
                self._publish(run.run_id, [again])
        room = self._room(run)
        if room:
            sent = self._dispatch(run.run_id, room)
            report["dispatched"] += len(sent)
            self._publish(run.run_id, sent)
        if not self.runs.count_shards(run.run_id, list(OPEN)):
            report["closed"] += 1
            self._claim(run.run_id)

    def _sweep_tasks(self, run: RunRecord, now: float, stall: float, report: dict[str, int]) -> None:
        stalled = []
        for task in self.runs.tasks(run.run_id, run.merge_round, run.merge_level):
            quiet_since = max(task.created_at, task.lease.expires)
            if task.state == TASK_DONE or task.lease.live(now) or now - quiet_since < stall:
                continue
            if self.runs.transact(run.run_id, Reads(tasks=(task.task_id,)), d.resweep_task(task.task_id, now)):
                stalled.append(task.task_id)
        report["tasks"] += len(stalled)
        self._publish_tasks(run.run_id, stalled)

    # -- the CLI's ----------------------------------------------------------------------------------------------

    def redrive(self, run_id: str) -> list[str]:
        """Put a run's failed shards back to work (``python -m worker redrive``); the run answers again when they
        finish. Also publishes again every shard dispatched and not being read. Returns the failed shards' IDs.
        Refused (``ValueError``) while the run's answer is being built."""
        run = self.runs.get_run(run_id)
        if run is None:
            raise LookupError(f"no run {run_id!r}")
        if run.state == MERGING:
            raise ValueError(f"run {run_id} is building its answer: redrive it once it has answered")
        failed = [s.shard_id for s in itertools.islice(self.runs.shards(run_id, FAILED), REDRIVE_BATCH)]
        if failed:
            room = self._room(run)
            sent = self.runs.transact(run_id, Reads(run=True, shards=tuple(failed), queued=_wanted(room)),
                                      d.requeue(failed, run.redrives, room, self.clock()))
            self._publish(run_id, sent or [])
        now = self.clock()
        self._publish(run_id, [(s.shard_id, s.generation) for s in self.runs.shards(run_id, DISPATCHED)
                               if not s.lease.live(now)])
        return failed

    def set_cap(self, run_id: str, max_in_flight: int) -> None:
        """Change a running run's cap on shards in flight; raising it dispatches queued shards now."""
        if not 1 <= max_in_flight <= 1000:
            raise ValueError("max_in_flight must be between 1 and 1000")
        if not self.runs.transact(run_id, Reads(run=True), d.set_cap(max_in_flight, self.clock())):
            raise LookupError(f"no run {run_id!r}")
        run = self.runs.get_run(run_id)
        room = self._room(run) if run is not None else 0
        if room:
            self._publish(run_id, self._dispatch(run_id, room))


@contextlib.contextmanager
def _phase(phases: dict[str, float], name: str):
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + (time.monotonic() - started) * 1000.0


def _wanted(room: int) -> int:
    """Queued shards a transaction reads to dispatch into ``room``: no more than it can send (each read locks)."""
    return max(0, min(room, d.DISPATCH_BATCH))


@dataclass
class Totals:
    """A run's shards summed at its answer (or for ``status``)."""

    shards: int = 0
    done_shards: int = 0
    failed: int = 0
    open: int = 0
    retried: int = 0
    done: Counts = None  # type: ignore[assignment]
    first_refusal: str | None = None
    failed_objects: int = 0  # objects in failed ranges that were measured
    failed_bytes: int = 0
    unmeasured: int = 0  # failed ranges never listed: their size is not known
    failed_ranges: list = None  # type: ignore[assignment]

    def __post_init__(self):
        self.done = self.done if self.done is not None else Counts()
        self.failed_ranges = self.failed_ranges if self.failed_ranges is not None else []


def tolerated(run: RunRecord, totals: Totals) -> bool:
    """Whether the run's failures are within its tolerated share, measured in objects: a failed range that was
    never listed is of unknown size, so no share can be claimed for it."""
    if not totals.failed:
        return True
    if totals.unmeasured:
        return False
    known = totals.done.listed + totals.failed_objects
    return known > 0 and 100.0 * totals.failed_objects / known <= run.tolerated_failure_percent


def _not_read(totals: Totals) -> str:
    text = f"{totals.failed_objects} object(s), {totals.failed_bytes} bytes"
    if totals.unmeasured:
        text += f", and {totals.unmeasured} range(s) never listed"
    return text


def run_section(run: RunRecord, totals: Totals, now: float, max_bytes: int = 1 << 20) -> dict[str, Any]:
    """The ``fanout`` section of a run's answer (result.schema.json): failures measured in objects and bytes; the
    failed ranges it lists take at most ``max_bytes`` of JSON, the rest counted in ``failed_ranges_omitted``."""
    known_objects = totals.done.listed + totals.failed_objects
    known_bytes = totals.done.bytes_listed + totals.failed_bytes
    section: dict[str, Any] = {
        "run_id": run.run_id,
        "shards": totals.shards,
        "succeeded": totals.done_shards,
        "failed": totals.failed,
        "retried": totals.retried,
        "objects_listed": totals.done.listed,
        "objects_read": 0,  # filled in from the merged summary (files)
        "bytes_listed": totals.done.bytes_listed,
        "bytes_read": totals.done.bytes_read,
        "objects_failed": totals.failed_objects,
        "bytes_failed": totals.failed_bytes,
        "ranges_unlisted": totals.unmeasured,
        "wall_seconds": round(max(0.0, now - run.created_at), 3),
        # Shares of the objects (and bytes) known to be under the prefix that were in ranges read; with ranges never
        # listed, the true share is lower: coverage_exact says so.
        "coverage": round(totals.done.listed / known_objects, 6) if known_objects else (0.0 if totals.failed else 1.0),
        "coverage_bytes": round(totals.done.bytes_listed / known_bytes, 6) if known_bytes
        else (0.0 if totals.failed else 1.0),
        "coverage_exact": totals.unmeasured == 0,
        "tolerated_failure_percent": run.tolerated_failure_percent,
        "max_in_flight": run.max_in_flight,
        "redrives": run.redrives,
        "answer": run.answers + 1,
    }
    if run.max_in_flight_requested is not None:
        section["max_in_flight_requested"] = run.max_in_flight_requested
    if totals.failed_ranges:
        listed, size = [], 0
        for s in totals.failed_ranges:
            item = {"start": s.start, "stop": s.stop, "shard_id": s.shard_id, "error": s.error,
                    "objects": s.expected_objects, "bytes": s.expected_bytes}
            size += len(json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass")) + 1
            if size > max_bytes:
                break
            listed.append(item)
        section["failed_ranges"] = listed
        if len(listed) < totals.failed:
            section["failed_ranges_omitted"] = totals.failed - len(listed)
    return section


def _error_result(job, error: WorkerError, timings: dict[str, float]) -> dict:
    from worker.results import error_result

    return error_result(job, error, timings)


def status_of(coordinator: Coordinator, run_id: str, now: float | None = None) -> dict[str, Any] | None:
    """A run's progress (``python -m worker status``): shards, objects, bytes, rate, ETA (an estimate), summed from
    the shards' records."""
    run = coordinator.runs.get_run(run_id)
    if run is None:
        return None
    totals = coordinator.totals(run_id)
    now = time.time() if now is None else now
    end = run.answered_at if run.state == ANSWERED and run.answered_at else now
    elapsed = max(1e-6, end - run.created_at)
    finished = totals.done_shards + totals.failed
    in_flight = coordinator.runs.count_shards(run_id, [DISPATCHED])
    eta = None
    if run.state == RUNNING and finished:
        # Shards finish at the rate seen so far; the open ones (those known) take as long again.
        eta = round(totals.open * elapsed / finished, 1)
    job = job_of(run.job_json)
    return {
        "run_id": run.run_id, "state": run.state, "shards_total": totals.shards, "shards_done": totals.done_shards,
        "shards_failed": totals.failed, "shards_open": totals.open, "in_flight": in_flight,
        "max_in_flight": run.max_in_flight, "objects_listed": totals.done.listed, "parquet": totals.done.parquet,
        "bytes_listed": totals.done.bytes_listed, "bytes_read": totals.done.bytes_read,
        "elapsed_seconds": round(elapsed, 1), "objects_per_second": round(totals.done.listed / elapsed, 1),
        "bytes_per_second": round(totals.done.bytes_read / elapsed), "eta_seconds": eta, "answers": run.answers,
        "redrives": run.redrives, "merge_level": run.merge_level, "bucket": job.bucket, "prefix": job.prefix,
        "mode": job.mode,
    }
