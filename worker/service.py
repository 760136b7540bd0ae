"""One job, start to end: federate -> list -> summarize -> result.

The collaborators are injected (``Storage``, ``Publisher``); ``worker.app`` builds the real
ones at the edge. The delivery contract lives here: every message ends in exactly one of
(a) one result published and the message acknowledged, or (b) a classified transient fault
(``Retryable``) raised so that Pub/Sub redelivers. Anything else, a bug included, is answered
with an ``internal`` error result that names an incident in the log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

from worker.config import Settings
from worker.errors import DeadlineExceeded, Forbidden, Internal, NotFound, Retryable, WorkerError
from worker.jobs import InvalidJobMessage, Job, JobRef, job_from_pubsub, new_job_id, parse_job
from worker.logs import new_incident_id, report_incident
from worker.results import error_result, fit, ok_result
from worker.summary import (
    DEFAULT_LIMITS,
    DeadlineReached,
    Limits,
    Summary,
    SummaryBuilder,
    skip_reason,
    summarize_object,
)

log = logging.getLogger("worker")
MAX_REASON = 300  # characters of a skipped object's reason (decoder messages can run long)


class ObjectStore(Protocol):
    """One job's view of one bucket. Only a ``WorkerError`` may escape its methods."""

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix``, in key order, fetched page by page as consumed."""
        ...

    def fetch(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (inclusive) of one object. ``NotFound``: the object is gone;
        ``Forbidden``: this object may not be read; ``Retryable``: try the job again later."""
        ...


class Storage(Protocol):
    def ensure_credentials(self) -> None: ...
    def objects(self, bucket: str, job_id: str) -> ObjectStore: ...


class Publisher(Protocol):
    def publish(self, result: dict, topic: str | None = None) -> str:
        """Publish to ``topic`` (default: REPLY_TOPIC). Raises ``Retryable`` for a fault a later attempt can get
        past (including REPLY_TOPIC missing or closed: the message waits for the operator); a permanent
        WorkerError (NotFound, Forbidden) for a job's own reply topic that is missing or closed; and
        ``ResultRejected`` when Pub/Sub refuses this very message."""
        ...


class Worker:
    """Runs jobs against S3 and answers them."""

    def __init__(self, settings: Settings, storage: Storage, publisher: Publisher | None = None):
        self.settings = settings
        self.storage = storage
        self.publisher = publisher
        # Full-mode jobs take turns (FULL_MODE_JOBS at once): with request concurrency above 1, a burst of
        # them would otherwise run side by side on one vCPU, each slower, holding all their memory at once.
        self._full_turns = threading.BoundedSemaphore(settings.full_mode_jobs)

    # -- entry points -----------------------------------------------------------------

    def handle_pubsub(self, data: Any, event_id: str | None = None) -> dict:
        """Answer one ``messagePublished`` event: publish its result, or raise ``Retryable`` to be redelivered."""
        if self.publisher is None:
            self.settings.require_reply_topic()
            raise RuntimeError("no publisher configured")
        result, job = self._result_of(
            lambda: job_from_pubsub(data, event_id, time_zone=self.settings.template_time_zone),
            lambda: _ref_of_event(data, event_id))
        return self._publish(result, job)

    def handle_http(self, body: bytes) -> dict:
        """Answer one HTTP job synchronously; retryable faults become an error result too (HTTP 503)."""
        result, _ = self._result_of(lambda: parse_job(body, time_zone=self.settings.template_time_zone),
                                    lambda: JobRef(job_id=new_job_id()), answer_retryable=True)
        result = fit(result, self.settings.result_max_bytes)
        _log_result(result)
        return result

    def _result_of(self, parse: Callable[[], Job], ref_of_message: Callable[[], JobRef], *,
                   answer_retryable: bool = False) -> tuple[dict, Job | None]:
        """The result of one message (and its job, if it parsed): the entry points' shared boundary.

        Raises ``Retryable`` unless ``answer_retryable`` (HTTP, where the caller retries on a 503);
        any other exception, a bug included, becomes an ``internal`` result naming its incident.
        """
        job: Job | None = None
        try:
            job = parse()
            return self._answer(job), job
        except InvalidJobMessage as e:
            return error_result(e.ref, e), None
        except Retryable as e:
            if not answer_retryable:
                raise
            return error_result(job or ref_of_message(), e), job
        except Exception as e:  # noqa: BLE001 - a bug while parsing or answering: answered once, never retried
            ref = job or ref_of_message()
            stage = "parsing the job" if job is None else "answering the job"
            return error_result(ref, self._incident(e, stage, ref)), job

    def _answer(self, job: Job) -> dict:
        """The result of a valid job: an error result for a refused reply topic, else the job's run."""
        if job.reply_topic and not self.settings.reply_topic_allowed(job.reply_topic):
            return error_result(job, Forbidden(f"reply_topic {job.reply_topic!r} is not in ALLOWED_REPLY_TOPICS "
                                               "(nor the worker's REPLY_TOPIC)"))
        return self.run(job)

    def _publish(self, result: dict, job: Job | None) -> dict:
        """Publish ``result`` where it belongs, exactly once; raise only what Pub/Sub should redeliver for."""
        assert self.publisher is not None
        own_topic = job is not None and job.reply_topic and self.settings.reply_topic_allowed(job.reply_topic)
        topic = job.reply_topic if own_topic else None
        try:
            result = fit(result, self.settings.result_max_bytes)
            result_id = self.publisher.publish(result, topic)
        except Retryable:
            raise
        except WorkerError as e:
            if topic is None:
                result = self._replacement(result, e)
            else:  # the job's own reply topic is missing or closed: say so where results go by default
                result = fit(error_result(job, e), self.settings.result_max_bytes)
            result_id = self.publisher.publish(result)
        except Exception as e:  # noqa: BLE001 - this result cannot be sent: send one that says so
            result = self._replacement(result, e)
            result_id = self.publisher.publish(result)
        _log_result(result, result_message_id=result_id)
        return result

    def _replacement(self, result: dict, error: Exception) -> dict:
        """A small ``internal`` error result that stands for one that Pub/Sub refused or that could not be built."""
        ref = JobRef(job_id=result["job_id"], message_id=result.get("message_id"), bucket=result.get("bucket"),
                     prefix=result.get("prefix"), mode=result.get("mode"), correlation_id=result.get("correlation_id"),
                     attributes=result.get("attributes") or {})
        return fit(error_result(ref, self._incident(error, "publishing the result", ref)),
                   self.settings.result_max_bytes)

    def _incident(self, exc: BaseException, stage: str, ref: Job | JobRef | None) -> Internal:
        incident_id = new_incident_id()
        report_incident(log, exc, incident_id, stage=stage, fields=_ids(ref) if ref is not None else None)
        return Internal(exc, stage=stage, incident_id=incident_id)

    # -- one job ----------------------------------------------------------------------

    def run(self, job: Job, on_progress: Progress | None = None) -> dict:
        """Summarize one job. Returns an ok or permanent-error result; raises only ``Retryable``."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.job_deadline_seconds
        if job.mode != "full":
            return self._run(job, on_progress, timings, started, deadline)
        # Wait for a turn at most half the deadline (the wait counts toward the request's own timeout);
        # then hand the job back to Pub/Sub rather than start it too late to finish.
        if not self._full_turns.acquire(timeout=self.settings.job_deadline_seconds / 2):
            log.warning("full-mode job handed back: the instance is busy with others",
                        extra={"fields": _ids(job) | {"code": "unavailable"}})
            raise Retryable(f"the instance ran {self.settings.full_mode_jobs} full-mode job(s) for "
                            f"{self.settings.job_deadline_seconds / 2:.0f}s; try again later",
                            details={"step": "waiting for a full-mode turn"})
        try:
            timings["queued"] = _ms_since(started)
            return self._run(job, on_progress, timings, started, deadline)
        finally:
            self._full_turns.release()

    def _run(self, job: Job, on_progress: Progress | None, timings: dict[str, float], started: float,
             deadline: float) -> dict:
        stage = "checking the job"
        try:
            if self.settings.allowed_buckets and job.bucket not in self.settings.allowed_buckets:
                raise Forbidden(f"bucket {job.bucket!r} is not in ALLOWED_BUCKETS")
            stage = "federating"
            with _phase(timings, "federation"):
                self.storage.ensure_credentials()
            stage = "listing and reading"
            full = job.mode == "full"
            tally = Tally()
            # Listing and reading overlap (the listing is streamed): "reading" covers both, "listing"
            # the time to the first page, which includes making the S3 client on an instance's first job.
            with _phase(timings, "listing"):
                store = self.storage.objects(job.bucket, job.job_id)
                listed = _first_page_timed(store.list(job.prefix))
            with _phase(timings, "reading"):
                try:
                    summary = summarize_listing(
                        store, listed, mode=job.mode, columns=job.columns, deadline=deadline,
                        concurrency=self.settings.full_mode_concurrency if full else self.settings.read_concurrency,
                        on_progress=on_progress, tally=tally, limits=self.settings.limits())
                except DeadlineReached as e:
                    of = f"{e.total}" if e.total is not None else "(still listing) the"
                    raise DeadlineExceeded(
                        f"stopped at the {self.settings.job_deadline_seconds}s job deadline after reading "
                        f"{e.done} of {of} Parquet objects; split the prefix into smaller jobs",
                        details={"files_read": e.done, "files_total": e.total, "listing_complete": e.total is not None,
                                 "deadline_seconds": self.settings.job_deadline_seconds}) from None
            stage = "building the result"
            if tally.parquet == 0:
                raise NotFound(_nothing_found(job, tally.listed))
            if tally.refused == tally.parquet:
                raise Forbidden(f"every Parquet object under s3://{job.bucket}/{job.prefix} was refused "
                                f"({tally.parquet}); the first: {tally.first_refusal}",
                                details={"objects_refused": tally.refused})
            timings["total"] = _ms_since(started)
            fields = summary.to_dict()
            if job.columns is not None:
                fields["missing_columns"] = sorted(set(job.columns) - set(summary.fields) - summary.partition_columns)
            return ok_result(job, fields, timings)
        except WorkerError as e:
            timings["total"] = _ms_since(started)
            if e.retryable:
                log.warning("job will be retried: %s", e.message, extra={"fields": _ids(job) | {"code": e.code}})
                raise
            return error_result(job, e, timings)
        except Exception as e:  # noqa: BLE001 - a bug: answered once as internal, never retried
            timings["total"] = _ms_since(started)
            return error_result(job, self._incident(e, stage, job), timings)


Progress = Callable[[int, int], None]
"""Called with (objects done, Parquet objects listed so far) as a job advances."""


@dataclass
class Tally:
    """What one job's listing held: filled in by :func:`summarize_listing` for the caller to judge the job by."""

    listed: int = 0
    parquet: int = 0
    refused: int = 0
    first_refusal: str | None = None


def summarize_listing(store: ObjectStore, listed: Iterable[tuple[str, int]], *, concurrency: int,
                      mode: str = "metadata", columns: Collection[str] | None = None,
                      deadline: float | None = None, clock: Callable[[], float] = time.monotonic,
                      on_progress: Progress | None = None, tally: Tally | None = None,
                      limits: Limits = DEFAULT_LIMITS) -> Summary:
    """Merge the summaries of every listed object, with at most ``concurrency`` objects in flight.

    ``listed`` is consumed as it comes (a streamed listing): memory does not grow with the number of
    keys. One object's failure is that object's: it is skipped with its reason (``tally.refused``
    counts access refusals). Raises ``Retryable`` as it comes, and ``DeadlineReached`` once ``clock()``
    passes ``deadline``: no new key is taken from the listing, no new object started, and in full
    mode no new row group.
    """
    tally = tally if tally is not None else Tally()
    total = SummaryBuilder()
    wanted = frozenset(columns) if columns is not None else None
    done = 0
    listing_complete = False
    lock = threading.Lock()

    def late() -> bool:
        return deadline is not None and clock() > deadline

    def parquet_keys() -> Iterator[tuple[str, int]]:
        nonlocal listing_complete
        for key, size in listed:
            if late():
                raise DeadlineReached(key, done=done, total=None)
            tally.listed += 1
            reason = skip_reason(key, size)
            if reason is None:
                tally.parquet += 1
                yield key, size
            else:
                total.skip(key, reason)
        listing_complete = True

    def one(item: tuple[str, int]) -> Summary:
        key, size = item

        def fetch(start: int, end: int) -> bytes:
            return store.fetch(key, start, end)

        try:
            if mode == "full":
                from worker.profile import profile_object  # numpy and sketches only for full mode

                return profile_object(key, size, fetch, columns=wanted, should_stop=late, limits=limits)
            return summarize_object(key, size, fetch, wanted, limits=limits)
        except (Retryable, DeadlineReached):
            raise
        except WorkerError as e:
            if isinstance(e, Forbidden):
                with lock:
                    tally.refused += 1
                    tally.first_refusal = tally.first_refusal or f"{key}: {e.message}"
            return Summary.of_skipped(key, _reason(e.message))
        except Exception as e:  # a decoder's fault on one hostile object costs that object only
            log.warning("object skipped: %s: %s", type(e).__name__, key, exc_info=True)
            return Summary.of_skipped(key, _reason(f"unreadable ({type(e).__name__}): {e}"))

    def progressed() -> None:
        if on_progress is not None:
            on_progress(done, tally.parquet)

    keys = parquet_keys()
    first = next(keys, None)
    second = next(keys, None) if first is not None else None
    if first is None:
        return total.build()
    if second is None:  # one object: no pool of threads to start and stop for it
        try:
            if late():
                raise DeadlineReached(first[0])
            total.add(one(first))
        except DeadlineReached:
            raise DeadlineReached(first[0], done=0, total=1) from None  # the listing is complete: one object
        done = 1
        progressed()
        return total.build()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="reader") as pool:
        in_flight: set = set()

        def collect(futures) -> None:
            nonlocal done
            for future in futures:
                total.add(future.result())
                done += 1
                progressed()

        try:
            # A bounded window in flight, so memory does not grow with the prefix.
            for item in chain([first, second], keys):
                if late():
                    raise DeadlineReached(item[0], done=done, total=tally.parquet if listing_complete else None)
                in_flight.add(pool.submit(one, item))
                if len(in_flight) >= 2 * concurrency:
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    collect(finished)
            collect(in_flight)
        except DeadlineReached as e:
            for future in in_flight:
                future.cancel()
            raise DeadlineReached(e.key, done=done, total=tally.parquet if listing_complete else None) from None
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return total.build()


def _reason(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[:MAX_REASON - 3] + "..."


def _first_page_timed(listing: Iterator[tuple[str, int]]) -> Iterator[tuple[str, int]]:
    """Start ``listing`` now (its first page, and any error such as NoSuchBucket), and hand it on as it comes."""
    first = next(listing, None)
    return iter(()) if first is None else chain([first], listing)


def _ref_of_event(data: Any, event_id: str | None) -> JobRef:
    """As much of a message's identity as can be had without trusting it (for an internal error's result)."""
    message_id = event_id
    try:
        candidate = data["message"]["messageId"]
        if isinstance(candidate, str) and candidate:
            message_id = candidate
    except (KeyError, TypeError, IndexError):
        pass
    return JobRef(job_id=message_id or new_job_id(), message_id=message_id)


def _nothing_found(job: Job, listed: int) -> str:
    where = f"s3://{job.bucket}/{job.prefix}"
    text = f"no Parquet object under {where}"
    if listed:
        text += f" ({listed} other object(s) skipped)"
    if any(c in job.prefix for c in "*?["):
        text += "; the prefix is matched literally, not as a glob"
    return text


@contextmanager
def _phase(timings: dict[str, float], name: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = _ms_since(started)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def _ids(job: Job | JobRef | None) -> dict:
    if job is None:
        return {}
    return {"job_id": job.job_id, "message_id": job.message_id, "bucket": job.bucket, "prefix": job.prefix}


def _log_result(result: dict, **fields: Any) -> None:
    entry = {"job_id": result["job_id"], "message_id": result["message_id"], "status": result["status"],
             "bucket": result["bucket"], "prefix": result["prefix"], "timings_ms": result["timings_ms"], **fields}
    if result["status"] == "ok":
        entry |= {"rows": result["rows"], "columns": result["columns"], "files": result["files"]}
        log.info("job done", extra={"fields": entry})
    else:
        entry |= {"code": result["error"]["code"]}
        log.warning("job failed: %s", result["error"]["message"], extra={"fields": entry})
