"""Runs, their shards and merge tasks in Firestore: ``worker.fanout.records.RunStore`` with ``google-cloud-firestore``.

``RUNS_COLLECTION/{run_id}`` holds a ``RunRecord``, ``RUNS_COLLECTION/{run_id}/shards/{shard_id}`` a
``ShardRecord``, ``RUNS_COLLECTION/{run_id}/merges/{task_id}`` a ``MergeTask``. Every change goes through one
transaction that reads what ``decide`` needs and writes what it returns. Every document carries ``expire_at`` (its
last write plus the retention), which the database's TTL policy deletes by.

The client reads ``FIRESTORE_EMULATOR_HOST`` itself, which is how the local stack points it at the emulator.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import time
from collections.abc import Iterator, Sequence
from typing import Any

from google.api_core import exceptions as google_errors
from google.api_core import retry as retries
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from worker import retention
from worker.errors import ConfigError, Unavailable
from worker.fanout.records import (
    QUEUED,
    TASK_OPEN,
    Change,
    Decide,
    MergeTask,
    Reads,
    RunRecord,
    ShardRecord,
    View,
    task_id_of,
)

SHARDS = "shards"  # the subcollection of a run's document holding its shards
MERGES = "merges"  # ... and its merge tasks
# Faults a later attempt can get past (the client has already retried what it retries itself). Aborted is
# contention: the transaction lost to another one more often than its attempts allow.
TRANSIENT = (google_errors.ServiceUnavailable, google_errors.DeadlineExceeded, google_errors.Aborted,
             google_errors.InternalServerError, google_errors.TooManyRequests, google_errors.ResourceExhausted,
             google_errors.Unknown, google_errors.Cancelled, google_errors.Unauthenticated,
             google_errors.RetryError, TimeoutError)
# The database is missing or closed to the worker: nothing a retry can fix until an operator does.
OPERATOR = (google_errors.PermissionDenied, google_errors.NotFound)
# How long one read may take, the client's own retries included (begin and commit keep the client's defaults).
READ_TIMEOUT_S = 60.0
TRANSACTION_ATTEMPTS = 5  # the client's default: commits that lost to contention are retried this often
PAGE_SIZE = 300  # shards() reads this many documents per query, so no one stream stays open for long


class FirestoreRunStore:
    """``RunStore`` on one Firestore database and collection."""

    def __init__(self, client: firestore.Client, collection: str, *, timeout: float = READ_TIMEOUT_S,
                 attempts: int = TRANSACTION_ATTEMPTS, retention_days: int = retention.DEFAULT_DAYS):
        self._client = client
        self._runs = client.collection(collection)
        self.collection = collection
        self._timeout = timeout
        self._attempts = attempts
        self._retention_days = retention_days
        # The client's own read retry, bounded by ``timeout`` (its default for reads is five minutes).
        self._retry = retries.Retry(initial=0.1, maximum=5.0, multiplier=1.3, timeout=timeout,
                                    predicate=retries.if_exception_type(
                                        google_errors.DeadlineExceeded, google_errors.InternalServerError,
                                        google_errors.ServiceUnavailable, google_errors.ResourceExhausted))
        self._read = {"retry": self._retry, "timeout": self._timeout}

    @classmethod
    def from_settings(cls, project: str | None, database: str, collection: str, **options: Any) -> FirestoreRunStore:
        """A store on ``database`` of ``project`` (the emulator when FIRESTORE_EMULATOR_HOST is set)."""
        return cls(firestore.Client(project=project, database=database), collection, **options)

    @property
    def database(self) -> str:
        """``projects/P/databases/D``, for messages."""
        return getattr(self._client, "_database_string", f"projects/{self._client.project}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    def _doc(self, record: RunRecord | ShardRecord | MergeTask) -> dict[str, Any]:
        return record.to_doc() | {retention.FIELD: retention.expire_at(time.time(), self._retention_days)}

    # -- RunStore ---------------------------------------------------------------------------

    def transact(self, run_id: str, reads: Reads, decide: Decide) -> Any:
        run_ref = self._runs.document(run_id)
        shards, merges = run_ref.collection(SHARDS), run_ref.collection(MERGES)
        read = self._read
        # Queued shards are found by a query outside the transaction, from a random place in ID order (IDs are
        # hashes), then read by ID inside it: a query in a transaction locks what it ranges over (the emulator
        # locks the whole collection), which would make every commit of the run contend with every other.
        candidates = self._queued(shards, reads.queued, exclude=set(reads.shards)) if reads.queued else []

        @firestore.transactional
        def attempt(transaction) -> Change:
            # Called again for each retry of the transaction: everything is read afresh, decide is pure.
            view = View()
            if reads.run:
                snapshot = run_ref.get(transaction=transaction, **read)
                view.run = RunRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None
            for shard_id in reads.shards:
                snapshot = shards.document(shard_id).get(transaction=transaction, **read)
                view.shards[shard_id] = ShardRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None
            for task_id in reads.tasks:
                snapshot = merges.document(task_id).get(transaction=transaction, **read)
                view.tasks[task_id] = MergeTask.from_doc(snapshot.to_dict()) if snapshot.exists else None
            if candidates:  # still queued? (another commit may have dispatched one since the query)
                found = self._client.get_all([shards.document(c) for c in candidates], transaction=transaction,
                                             **read)
                records = {s.id: ShardRecord.from_doc(s.to_dict()) for s in found if s.exists}
                view.queued = [r for c in candidates if (r := records.get(c)) is not None and r.state == QUEUED]
            change = decide(view)
            if change.run is not None:
                if change.run.run_id != run_id:
                    raise ValueError(f"decide returned run {change.run.run_id!r} in a transaction on {run_id!r}")
                transaction.set(run_ref, self._doc(change.run))
            for shard in change.shards:
                transaction.set(shards.document(shard.shard_id), self._doc(shard))
            for task in change.tasks:
                transaction.set(merges.document(task.task_id), self._doc(task))
            return change

        with self._errors(f"the transaction on run {run_id}"):
            tries = 1
            while True:
                try:
                    return attempt(self._client.transaction(max_attempts=self._attempts)).value
                except google_errors.Aborted:
                    # The client retries a commit that lost to contention, not a read that did (Firestore aborts
                    # the younger of two transactions contending for a document, at its next read or commit).
                    if tries >= self._attempts:
                        raise
                    time.sleep(random.uniform(0, min(1.0, 0.05 * 2 ** tries)))  # noqa: S311 (jitter)
                    tries += 1

    def _queued(self, shards, most: int, exclude: set[str]) -> list[str]:
        """IDs of up to ``most`` queued shards, from a random place in ID order (wrapping round)."""
        origin = shards.document(secrets.token_hex(12))
        queued = shards.where(filter=FieldFilter("state", "==", QUEUED))
        with self._errors("finding queued shards"):
            found = [s.id for s in queued.where(filter=FieldFilter("__name__", ">=", origin)).limit(most)
                     .stream(**self._read)]
            if len(found) < most:
                found += [s.id for s in queued.where(filter=FieldFilter("__name__", "<", origin))
                          .limit(most - len(found)).stream(**self._read)]
        return [shard_id for shard_id in found if shard_id not in exclude]

    def claim_queued(self, run_id: str, most: int, claim) -> list[ShardRecord]:
        """Optimistic: no transaction, so commits of one run passing slots at once never hold each other's locks
        (the emulator holds a contended lock for seconds); a write whose document changed since its read fails its
        precondition and the next candidate is tried."""
        shards = self._runs.document(run_id).collection(SHARDS)
        claimed: list[ShardRecord] = []
        for shard_id in self._queued(shards, 2 * most, exclude=set()):
            if len(claimed) >= most:
                break
            ref = shards.document(shard_id)
            with self._errors(f"dispatching a queued shard of run {run_id}"):
                snapshot = ref.get(**self._read)
                record = ShardRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None
                if record is None or record.state != QUEUED:
                    continue
                new = claim(record.copy())
                try:
                    ref.update(self._doc(new), option=self._client.write_option(last_update_time=snapshot.update_time),
                               timeout=self._timeout)
                except (google_errors.FailedPrecondition, google_errors.Aborted):
                    continue  # another commit dispatched it first
            claimed.append(new)
        return claimed

    def create_run(self, run: RunRecord, shards: Sequence[ShardRecord]) -> bool:
        """The run's document and its first shards in one batch, with a create-only precondition on the run's."""
        run_ref = self._runs.document(run.run_id)
        batch = self._client.batch()
        batch.create(run_ref, self._doc(run))
        for shard in shards:
            batch.set(run_ref.collection(SHARDS).document(shard.shard_id), self._doc(shard))
        with self._errors(f"creating run {run.run_id}"):
            try:
                batch.commit(retry=self._retry, timeout=self._timeout)
            except google_errors.AlreadyExists:
                return False
        return True

    def create_tasks(self, run_id: str, tasks: Sequence[MergeTask]) -> None:
        merges = self._runs.document(run_id).collection(MERGES)
        with self._errors(f"creating merge tasks of run {run_id}"):
            for task in tasks:
                with contextlib.suppress(google_errors.AlreadyExists, google_errors.Conflict):
                    merges.document(task.task_id).create(self._doc(task), retry=self._retry, timeout=self._timeout)

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._errors(f"reading run {run_id}"):
            snapshot = self._runs.document(run_id).get(**self._read)
        return RunRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None

    def get_shard(self, run_id: str, shard_id: str) -> ShardRecord | None:
        with self._errors(f"reading shard {shard_id} of run {run_id}"):
            snapshot = self._runs.document(run_id).collection(SHARDS).document(shard_id).get(**self._read)
        return ShardRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None

    def get_task(self, run_id: str, task_id: str) -> MergeTask | None:
        with self._errors(f"reading merge task {task_id} of run {run_id}"):
            snapshot = self._runs.document(run_id).collection(MERGES).document(task_id).get(**self._read)
        return MergeTask.from_doc(snapshot.to_dict()) if snapshot.exists else None

    def shards(self, run_id: str, state: str | None = None) -> Iterator[ShardRecord]:
        """The run's shards (in ``state``, or all), in shard ID order, read a page at a time."""
        query = self._runs.document(run_id).collection(SHARDS)
        if state is not None:
            query = query.where(filter=FieldFilter("state", "==", state))
        for snapshot in self._pages(query, f"listing the shards of run {run_id}"):
            yield ShardRecord.from_doc(snapshot.to_dict())

    def count_shards(self, run_id: str, states: Sequence[str]) -> int:
        query = self._runs.document(run_id).collection(SHARDS).where(filter=FieldFilter("state", "in", list(states)))
        with self._errors(f"counting the shards of run {run_id}"):
            (result,) = query.count().get(**self._read)
        return int(result[0].value)

    def _level(self, run_id: str, round_: int, level: int):
        """The merge tasks of one round and level: a range of IDs (``task_id_of``), so no composite index is needed."""
        merges = self._runs.document(run_id).collection(MERGES)
        prefix = task_id_of(round_, level, 0)[:-7]
        return (merges.where(filter=FieldFilter("__name__", ">=", merges.document(prefix)))
                .where(filter=FieldFilter("__name__", "<", merges.document(prefix + "~"))))

    def tasks(self, run_id: str, round_: int, level: int) -> Iterator[MergeTask]:
        for snapshot in self._pages(self._level(run_id, round_, level), f"listing merge tasks of run {run_id}"):
            yield MergeTask.from_doc(snapshot.to_dict())

    def open_tasks(self, run_id: str, round_: int, level: int) -> int:
        query = self._level(run_id, round_, level).where(filter=FieldFilter("state", "==", TASK_OPEN))
        with self._errors(f"counting merge tasks of run {run_id}"):
            (result,) = query.count().get(**self._read)
        return int(result[0].value)

    def runs(self, states: Sequence[str]) -> Iterator[RunRecord]:
        query = self._runs.where(filter=FieldFilter("state", "in", list(states)))
        for snapshot in self._pages(query, "listing runs"):
            yield RunRecord.from_doc(snapshot.to_dict())

    def _pages(self, query, what: str) -> Iterator[Any]:
        """The documents of ``query`` in ID order, a page at a time, so no one stream stays open for long."""
        query = query.order_by("__name__").limit(PAGE_SIZE)
        last = None
        while True:
            page = query if last is None else query.start_after(last)
            with self._errors(what):
                snapshots = list(page.stream(**self._read))
            yield from snapshots
            if len(snapshots) < PAGE_SIZE:
                return
            last = snapshots[-1]

    # -- errors -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str):
        """Firestore's faults as the worker's: transient ones ``Unavailable``, a database that is missing or
        closed to the worker ``ConfigError``; anything
        else (a bug) propagates."""
        try:
            yield
        except TRANSIENT as e:
            raise Unavailable(f"Firestore failed during {what} ({self.database}): {type(e).__name__}",
                              details={"step": "firestore"}) from None
        except ValueError as e:
            # The transaction lost to contention on every attempt: the client wraps its last Aborted.
            if isinstance(e.__cause__, google_errors.Aborted):
                raise Unavailable(f"Firestore contention outlasted {self._attempts} attempts at {what} "
                                  f"({self.database})", details={"step": "firestore"}) from None
            raise
        except OPERATOR as e:
            if isinstance(e, google_errors.NotFound):
                raise ConfigError(f"Firestore database {self.database} does not exist (FIRESTORE_DATABASE; "
                                  f"{what})", details={"step": "firestore"}) from None
            raise ConfigError(f"the worker may not use Firestore database {self.database} (grant its service "
                              f"account roles/datastore.user; {what})", details={"step": "firestore"}) from None
