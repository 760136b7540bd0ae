"""One job, start to end: federate -> list -> summarize -> result.

The collaborators are injected (``Storage``, ``Publisher``); ``worker.app`` builds the real
ones at the edge. The retry contract lives here: permanent errors become one error result;
retryable ones are raised so that Pub/Sub redelivers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any, Protocol

from worker.config import Settings
from worker.errors import DeadlineExceeded, Forbidden, NotFound, WorkerError
from worker.jobs import InvalidJobMessage, Job, job_from_pubsub, parse_job
from worker.results import error_result, ok_result
from worker.summary import DeadlineReached, Summary, SummaryBuilder, skip_reason, summarize_object

log = logging.getLogger("worker")


class ObjectStore(Protocol):
    def list(self, prefix: str) -> Iterator[tuple[str, int]]: ...
    def fetch(self, key: str, start: int, end: int) -> bytes: ...


class Storage(Protocol):
    def ensure_credentials(self) -> None: ...
    def objects(self, bucket: str, job_id: str) -> ObjectStore: ...


class Publisher(Protocol):
    def publish(self, result: dict, topic: str | None = None) -> str:
        """Publish to ``topic`` (default: REPLY_TOPIC). A topic that is missing or closed to the worker
        raises a permanent WorkerError (NotFound, Forbidden); anything else that fails raises too."""
        ...


class Worker:
    """Runs jobs against S3 and answers them."""

    def __init__(self, settings: Settings, storage: Storage, publisher: Publisher | None = None):
        self.settings = settings
        self.storage = storage
        self.publisher = publisher

    # -- entry points -----------------------------------------------------------------

    def handle_pubsub(self, data: Any, event_id: str | None = None) -> dict:
        """Answer one ``messagePublished`` event: publish its result, or raise to be redelivered."""
        if self.publisher is None:
            self.settings.require_reply_topic()
            raise RuntimeError("no publisher configured")
        job, topic = None, None
        try:
            job = job_from_pubsub(data, event_id, time_zone=self.settings.template_time_zone)
            self._check_reply_topic(job)
        except InvalidJobMessage as e:
            result = error_result(e.ref, e)
        except Forbidden as e:
            result = error_result(job, e)
        else:
            topic = job.reply_topic
            result = self.run(job)
        try:
            result_id = self.publisher.publish(result, topic)
        except WorkerError as e:
            if topic is None or e.retryable:
                raise
            # The job's own reply topic is missing or closed: say so where results go by default.
            result = error_result(job, e)
            result_id = self.publisher.publish(result)
        _log_result(result, result_message_id=result_id)
        return result

    def handle_http(self, body: bytes) -> dict:
        """Answer one HTTP job synchronously; retryable faults become an error result too."""
        try:
            job = parse_job(body, time_zone=self.settings.template_time_zone)
            self._check_reply_topic(job)
        except InvalidJobMessage as e:
            result = error_result(e.ref, e)
        except Forbidden as e:
            result = error_result(job, e)
        else:
            try:
                result = self.run(job)
            except WorkerError as e:  # retryable: the caller sees 503 and may try again
                result = error_result(job, e)
        _log_result(result)
        return result

    def _check_reply_topic(self, job: Job) -> None:
        if job.reply_topic and not self.settings.reply_topic_allowed(job.reply_topic):
            raise Forbidden(f"reply_topic {job.reply_topic!r} is not in ALLOWED_REPLY_TOPICS "
                            "(nor the worker's REPLY_TOPIC)")

    # -- one job ----------------------------------------------------------------------

    def run(self, job: Job, on_progress: Progress | None = None) -> dict:
        """Summarize one job. Returns an ok or permanent-error result; raises retryable errors."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.job_deadline_seconds
        try:
            if self.settings.allowed_buckets and job.bucket not in self.settings.allowed_buckets:
                raise Forbidden(f"bucket {job.bucket!r} is not in ALLOWED_BUCKETS")
            with _phase(timings, "federation"):
                self.storage.ensure_credentials()
            with _phase(timings, "listing"):  # includes making the S3 client on an instance's first job
                store = self.storage.objects(job.bucket, job.job_id)
                listed = list(store.list(job.prefix))
            full = job.mode == "full"
            with _phase(timings, "reading"):
                try:
                    summary = summarize_listing(
                        store, listed, mode=job.mode, columns=job.columns, deadline=deadline,
                        concurrency=self.settings.full_mode_concurrency if full else self.settings.read_concurrency,
                        on_progress=on_progress)
                except DeadlineReached as e:
                    raise DeadlineExceeded(
                        f"stopped at the {self.settings.job_deadline_seconds}s job deadline after reading "
                        f"{e.args[1]} of {e.args[2]} Parquet objects; split the prefix into smaller jobs",
                        details={"files_read": e.args[1], "files_total": e.args[2],
                                 "deadline_seconds": self.settings.job_deadline_seconds}) from None
            if summary.files == 0 and not any(skip_reason(k, s) is None for k, s in listed):
                raise NotFound(_nothing_found(job, len(listed)))
        except WorkerError as e:
            timings["total"] = _ms_since(started)
            if e.retryable:
                log.warning("job will be retried: %s", e.message, extra={"fields": _ids(job) | {"code": e.code}})
                raise
            return error_result(job, e, timings)
        timings["total"] = _ms_since(started)
        fields = summary.to_dict()
        if job.columns is not None:
            fields["missing_columns"] = sorted(set(job.columns) - set(summary.fields) - summary.partition_columns)
        return ok_result(job, fields, timings)


Progress = Callable[[int, int], None]
"""Called with (objects done, objects to read) as a job advances."""


def summarize_listing(store: ObjectStore, listed: list[tuple[str, int]], *, concurrency: int,
                      mode: str = "metadata", columns: Collection[str] | None = None,
                      deadline: float | None = None, clock: Callable[[], float] = time.monotonic,
                      on_progress: Progress | None = None) -> Summary:
    """Merge the summaries of every listed object, with at most ``concurrency`` objects in flight.

    Raises DeadlineReached(key, done, total) once ``clock()`` passes ``deadline``: no new
    object is started, and in full mode no new row group.
    """
    total = SummaryBuilder()
    to_read = []
    for key, size in listed:
        reason = skip_reason(key, size)
        if reason is None:
            to_read.append((key, size))
        else:
            total.add(Summary.of_skipped(key, reason))
    if not to_read:
        return total.build()
    wanted = frozenset(columns) if columns is not None else None

    def late() -> bool:
        return deadline is not None and clock() > deadline

    def one(item: tuple[str, int]) -> Summary:
        key, size = item

        def fetch(start: int, end: int) -> bytes:
            return store.fetch(key, start, end)

        try:
            if mode == "full":
                from worker.profile import profile_object  # numpy and sketches only for full mode

                return profile_object(key, size, fetch, columns=wanted, should_stop=late)
            return summarize_object(key, size, fetch, wanted)
        except NotFound:
            return Summary.of_skipped(key, "object disappeared after it was listed")

    if len(to_read) == 1:  # one object: no pool of threads to start and stop for it
        if late():
            raise DeadlineReached(to_read[0][0], 0, 1)
        total.add(one(to_read[0]))
        if on_progress is not None:
            on_progress(1, 1)
        return total.build()
    done = 0
    with ThreadPoolExecutor(max_workers=min(concurrency, len(to_read)), thread_name_prefix="reader") as pool:
        in_flight: set = set()

        def collect(futures) -> None:
            nonlocal done
            for future in futures:
                total.add(future.result())
                done += 1
                if on_progress is not None:
                    on_progress(done, len(to_read))

        try:
            # A bounded window in flight, so memory does not grow with the prefix.
            for item in to_read:
                if late():
                    raise DeadlineReached(item[0], done, len(to_read))
                in_flight.add(pool.submit(one, item))
                if len(in_flight) >= 2 * concurrency:
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    collect(finished)
            collect(in_flight)
        except DeadlineReached as e:
            for future in in_flight:
                future.cancel()
            raise DeadlineReached(e.args[0], done, len(to_read)) from None
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return total.build()


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


def _ids(job: Job) -> dict:
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
