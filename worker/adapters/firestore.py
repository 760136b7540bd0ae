"""Runs and their shards in Firestore: ``worker.runs.RunStore`` with ``google-cloud-firestore``.

``RUNS_COLLECTION/{run_id}`` holds a ``RunRecord``, ``RUNS_COLLECTION/{run_id}/shards/{shard_id}`` a
``ShardRecord``. Every change goes through one transaction that reads what ``decide`` needs and writes
what it returns, so two instances finishing shards of one run at once each count exactly once.

The client reads ``FIRESTORE_EMULATOR_HOST`` itself, which is how the local stack points it at the
emulator.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from typing import Any

from google.api_core import exceptions as google_errors
from google.api_core import retry as retries
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter

from worker.errors import ConfigError, NotFound, Unavailable
from worker.runs import QUEUED, Change, Decide, RunRecord, ShardRecord, queued_wanted

SHARDS = "shards"  # the subcollection of a run's document holding its shards
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
                 attempts: int = TRANSACTION_ATTEMPTS):
        self._client = client
        self._runs = client.collection(collection)
        self.collection = collection
        self._timeout = timeout
        self._attempts = attempts
        # The client's own read retry, bounded by ``timeout`` (its default for reads is five minutes).
        self._retry = retries.Retry(initial=0.1, maximum=5.0, multiplier=1.3, timeout=timeout,
                                    predicate=retries.if_exception_type(
                                        google_errors.DeadlineExceeded, google_errors.InternalServerError,
                                        google_errors.ServiceUnavailable, google_errors.ResourceExhausted))

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

    # -- RunStore ---------------------------------------------------------------------------

    def transact(self, run_id: str, shard_id: str | None, decide: Decide) -> Any:
        run_ref = self._runs.document(run_id)
        shards = run_ref.collection(SHARDS)
        shard_ref = shards.document(shard_id) if shard_id else None
        read = {"retry": self._retry, "timeout": self._timeout}

        @firestore.transactional
        def attempt(transaction) -> Change:
            # Called again for each retry of the transaction: everything is read afresh, decide is pure.
            snapshot = run_ref.get(transaction=transaction, **read)
            run = RunRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None
            shard = None
            if shard_ref is not None:
                snapshot = shard_ref.get(transaction=transaction, **read)
                shard = ShardRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None
            room = queued_wanted(run)
            queued = []
            if room:
                query = shards.where(filter=FieldFilter("state", "==", QUEUED)).limit(room)
                queued = [ShardRecord.from_doc(s.to_dict()) for s in query.stream(transaction=transaction, **read)]
            change = decide(run, shard, queued)
            if change.run is not None:
                if change.run.run_id != run_id:
                    raise ValueError(f"decide returned run {change.run.run_id!r} in a transaction on {run_id!r}")
                transaction.set(run_ref, change.run.to_doc())
            for record in change.shards:
                transaction.set(shards.document(record.shard_id), record.to_doc())
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

    def get_run(self, run_id: str) -> RunRecord | None:
        with self._errors(f"reading run {run_id}"):
            snapshot = self._runs.document(run_id).get(retry=self._retry, timeout=self._timeout)
        return RunRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None

    def get_shard(self, run_id: str, shard_id: str) -> ShardRecord | None:
        with self._errors(f"reading shard {shard_id} of run {run_id}"):
            snapshot = (self._runs.document(run_id).collection(SHARDS).document(shard_id)
                        .get(retry=self._retry, timeout=self._timeout))
        return ShardRecord.from_doc(snapshot.to_dict()) if snapshot.exists else None

    def shards(self, run_id: str, state: str | None = None) -> Iterator[ShardRecord]:
        """The run's shards (in ``state``, or all), in shard ID order, read a page at a time."""
        query = self._runs.document(run_id).collection(SHARDS)
        if state is not None:
            query = query.where(filter=FieldFilter("state", "==", state))
        query = query.order_by("__name__").limit(PAGE_SIZE)
        last = None
        while True:
            page = query if last is None else query.start_after(last)
            with self._errors(f"listing the shards of run {run_id}"):
                snapshots = list(page.stream(retry=self._retry, timeout=self._timeout))
            for snapshot in snapshots:
                yield ShardRecord.from_doc(snapshot.to_dict())
            if len(snapshots) < PAGE_SIZE:
                return
            last = snapshots[-1]

    def note_attempt(self, run_id: str, shard_id: str) -> None:
        """One more attempt at a shard; ``NotFound`` if the shard has no record."""
        ref = self._runs.document(run_id).collection(SHARDS).document(shard_id)
        with self._errors(f"counting an attempt at shard {shard_id} of run {run_id}", missing=NotFound(
                f"shard {shard_id} of run {run_id} has no record in {self.collection}")):
            ref.update({"attempts": firestore.Increment(1)}, retry=self._retry, timeout=self._timeout)

    # -- errors -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str, *, missing: NotFound | None = None):
        """Firestore's faults as the worker's: transient ones ``Unavailable``, a database that is missing or
        closed to the worker ``ConfigError`` (``missing`` instead when a document to update was not there);
        anything else (a bug) propagates."""
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
            # Firestore says "No document to update", its emulator "no entity to update"; a missing database
            # says otherwise.
            if missing is not None and isinstance(e, google_errors.NotFound) and "to update" in str(e).lower():
                raise missing from None
            if isinstance(e, google_errors.NotFound):
                raise ConfigError(f"Firestore database {self.database} does not exist (FIRESTORE_DATABASE; "
                                  f"{what})", details={"step": "firestore"}) from None
            raise ConfigError(f"the worker may not use Firestore database {self.database} (grant its service "
                              f"account roles/datastore.user; {what})", details={"step": "firestore"}) from None
