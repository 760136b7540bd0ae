"""One job, start to end: federate -> list -> summarize -> result.

The collaborators are injected (``Storage``, ``Publisher``); ``worker.app`` builds the real
ones at the edge. The delivery contract lives here: every message ends in exactly one of
(a) one result published and the message acknowledged, or (b) a classified transient fault
(``Retryable``) raised so that Pub/Sub redelivers. Anything else, a bug included, is answered
with an ``internal`` error result that names an incident in the log.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol

from worker.config import Settings, is_topic_path
from worker.errors import (
    DeadlineExceeded,
    Forbidden,
    Internal,
    InvalidJob,
    NotFound,
    Retryable,
    Unavailable,
    WorkerError,
)
from worker.fanout.coordinator import Coordinator, Stores
from worker.fanout.ranges import MAX_PREFIX_DEPTH
from worker.jobs import Job, JobRef, job_from_pubsub, new_job_id, parse_job
from worker.logs import new_incident_id, report_incident
from worker.results import error_result, fit, ok_result
from worker.summary import (
    DEFAULT_LIMITS,
    Limits,
    StoppedAtDeadline,
    Summary,
    SummaryBuilder,
    is_objects_own,
    skip_reason,
    summarize_object,
)

log = logging.getLogger("worker")
MAX_REASON = 300  # characters of a skipped object's reason (decoder messages can run long)


class ObjectStore(Protocol):
    """One job's view of one bucket (from ``Storage.objects``): what a backend or a test double implements.

    Only a ``WorkerError`` may escape its methods: the backend translates its own faults (``Retryable`` for
    what a later attempt can get past, ``Forbidden``, ``NotFound``...); anything else is taken for a bug (the
    job answers ``internal``). ``list`` and ``common_prefixes``
    are called from the job's thread, ``fetch`` from several reader threads at once.
    """

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object whose key starts with ``prefix`` and, if given, sorts after
        ``start_after`` (exclusive), in S3's order: ascending by the keys' UTF-8 bytes (Python's ``str`` order for
        keys without lone surrogates). ``prefix`` is literal, not a glob, and without a trailing slash it also
        matches sibling keys (``d/2024`` matches ``d/2024-old/x``); folder markers and non-Parquet keys are
        listed too (the caller skips them). Lazy: fetched page by page as consumed, so a listing of millions of
        keys costs one page of memory; its errors surface while iterating. ``NotFound``: the bucket does not
        exist; ``Forbidden``: the bucket may not be listed."""
        ...

    def common_prefixes(self, prefix: str, delimiter: str = "/", max_pages: int = 10) -> list[str]:
        """The distinct key prefixes right under ``prefix``, each up to and including the next ``delimiter``
        (S3's CommonPrefixes, its "folders"), in S3's order as ``list``; at most ``max_pages`` pages of listing,
        so a folder of very many may be cut short: used to split key space, never to count. Errors as ``list``."""
        ...

    def fetch(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` of one listed object, ``end`` inclusive (an HTTP Range): ``end - start + 1``
        bytes, fewer only if the object is now shorter (the caller checks). An error with ``object_fault`` is
        that object's: ``ObjectChanged`` (deleted, or shrank below ``start``, since it was listed), ``ObjectDenied``,
        ``ObjectArchived``, ``ObjectEncrypted``: the job skips that object and goes on. ``Retryable``: the whole
        job (or shard) is tried again later; any other error ends it (``worker.summary.is_objects_own``)."""
        ...


class Storage(Protocol):
    """The worker's access to S3, built once per instance at the edge (``worker.app``) and shared by its jobs."""

    def ensure_credentials(self) -> None:
        """Have valid credentials now (the job's federation phase; cached ones are reused until near expiry).
        Only a ``WorkerError`` may escape: ``FederationFailed`` when no retry can help, ``Retryable`` when STS or
        the token source is unreachable."""
        ...

    def objects(self, bucket: str, job_id: str) -> ObjectStore:
        """A new view of ``bucket`` for one job: per job, never shared between jobs (its requests carry
        ``job_id``). Called once per job, after ``ensure_credentials``; the view's methods make the requests."""
        ...


class Publisher(Protocol):
    def publish(self, result: dict, topic: str | None = None) -> str:
        """Publish to ``topic`` (default: REPLY_TOPIC). Raises ``Retryable`` for a fault a later attempt can get
        past (including REPLY_TOPIC missing or closed: the message waits for the operator); a permanent
        WorkerError (NotFound, Forbidden) for a job's own reply topic that is missing or closed; and
        ``ResultRejected`` when Pub/Sub refuses this very message."""
        ...


class Worker:
    """Runs jobs against S3 and answers them."""

    def __init__(self, settings: Settings, storage: Storage, publisher: Publisher | None = None,
                 stores: Stores | None = None):
        self.settings = settings
        self.storage = storage
        self.publisher = publisher
        self.stores = stores  # fan-out: runs, partials, shard messages (None: every job runs on one instance)
        self.coordinator = Coordinator(self, stores) if stores is not None else None
        # Full-mode jobs take turns (FULL_MODE_JOBS at once): with request concurrency above 1, a burst of
        # them would otherwise run side by side on one vCPU, each slower, holding all their memory at once.
        self._full_turns = threading.BoundedSemaphore(settings.full_mode_jobs)

    # -- entry points -----------------------------------------------------------------

    def handle_pubsub(self, data: Any, event_id: str | None = None, source: str | None = None) -> dict | None:
        """Answer one ``messagePublished`` event: publish its result, or raise ``Retryable`` to be redelivered.

        A message whose ``source`` is SHARD_TOPIC (the push path names it) is a shard of a run: it reads its
        key range instead; from SHARD_DEAD_LETTER_TOPIC, it marks the range failed. Only the topic decides
        (a job's attributes cannot make it a shard). A job that fans out is answered later, by the run's last
        shard: None then.
        """
        if self.publisher is None:
            self.settings.require_reply_topic()
            raise RuntimeError("no publisher configured")
        topic = _topic_of(source)
        if topic is not None and topic in (self.settings.shard_topic, self.settings.shard_dead_letter_topic):
            self._handle_run_work(data, event_id, topic, dead=topic == self.settings.shard_dead_letter_topic)
            return None
        result, job = self._result_of(
            lambda: job_from_pubsub(data, event_id, time_zone=self.settings.template_time_zone),
            lambda: _ref_of_event(data, event_id))
        if result is None:  # fanned out: the run answers
            return None
        return self._publish(result, job)

    def handle_http(self, body: bytes) -> dict:
        """Answer one HTTP job synchronously; retryable faults become an error result too (HTTP 503)."""
        result, _ = self._result_of(lambda: parse_job(body, time_zone=self.settings.template_time_zone),
                                    lambda: JobRef(job_id=new_job_id()), answer_retryable=True)
        result = fit(result, self.settings.result_max_bytes)
        _log_result(result)
        return result

    def _result_of(self, parse: Callable[[], Job], ref_of_message: Callable[[], JobRef], *,
                   answer_retryable: bool = False) -> tuple[dict | None, Job | None]:
        """The result of one message (and its job, if it parsed): the entry points' shared boundary.

        Raises ``Retryable`` unless ``answer_retryable`` (HTTP, where the caller retries on a 503);
        any other exception, a bug included, becomes an ``internal`` result naming its incident.
        """
        job: Job | None = None
        try:
            job = parse()
            return self._answer(job), job
        except InvalidJob as e:
            return error_result(e.ref or ref_of_message(), e), None
        except Retryable as e:
            if not answer_retryable:
                raise
            return error_result(job or ref_of_message(), e), job
        except Exception as e:  # noqa: BLE001 - a bug while parsing or answering: answered once, never retried
            ref = job or ref_of_message()
            stage = "parsing the job" if job is None else "answering the job"
            return error_result(ref, self._incident(e, stage, ref)), job

    def _answer(self, job: Job) -> dict | None:
        """The result of a valid job: an error result for a refused reply topic, else the job's run."""
        if job.reply_topic and not self.settings.reply_topic_allowed(job.reply_topic):
            return error_result(job, Forbidden(f"reply_topic {job.reply_topic!r} is not in ALLOWED_REPLY_TOPICS "
                                               "(nor the worker's REPLY_TOPIC)"))
        return self.run(job)

    def _publish(self, result: dict, job: Job | None) -> dict:
        """Publish ``result`` where it belongs, exactly once; raise only what Pub/Sub should redeliver for."""
        return self._send(result, job)[0]

    def _send(self, result: dict, job: Job | None) -> tuple[dict, str]:
        """``_publish``, also returning the published message's ID."""
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
        return result, result_id

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

    def run(self, job: Job, on_progress: Progress | None = None) -> dict | None:
        """Summarize one job. Returns an ok or permanent-error result (None: the job fanned out, its run answers
        later); raises only ``Retryable``."""
        timings: dict[str, float] = {}
        started = time.perf_counter()
        deadline = time.monotonic() + self.settings.job_deadline_seconds
        if job.mode != "full":
            return self._run(job, on_progress, timings, started, deadline)
        with self._turn(True, what="job(s)", step="waiting for a full-mode turn", fields=_ids(job)):
            timings["queued"] = _ms_since(started)
            return self._run(job, on_progress, timings, started, deadline)

    def _run(self, job: Job, on_progress: Progress | None, timings: dict[str, float], started: float,
             deadline: float) -> dict | None:
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
            fan_out = self._fan_out_mode(job)
            # Listing and reading overlap (the listing is streamed): "reading" covers both, "listing"
            # the time to the first page, which includes making the S3 client on an instance's first job.
            with _phase(timings, "listing"):
                store = self.storage.objects(job.bucket, job.job_id)
                listed = _first_page_timed(store.list(job.prefix))
            if fan_out != "never":
                stage = "fanning out"
                head, listed = _head(listed, None if fan_out == "always" else self.settings.fanout_min_objects,
                                     self.settings.fanout_min_bytes if full else None)
                if head is not None:
                    self._open_run(job, store, head)
                    return None
                stage = "listing and reading"
            with _phase(timings, "reading"):
                try:
                    summary = summarize_listing(
                        store, listed, mode=job.mode, columns=job.columns, deadline=deadline,
                        concurrency=self.settings.full_mode_concurrency if full else self.settings.read_concurrency,
                        on_progress=on_progress, tally=tally, limits=self.settings.limits())
                except StoppedAtDeadline as e:
                    of = f"{e.total}" if e.total is not None else "(still listing) the"
                    raise DeadlineExceeded(
                        f"stopped at the {self.settings.job_deadline_seconds}s job deadline after reading "
                        f"{e.done} of {of} Parquet objects; split the prefix into smaller jobs",
                        details={"files_read": e.done, "files_total": e.total, "listing_complete": e.total is not None,
                                 "deadline_seconds": self.settings.job_deadline_seconds}) from None
            stage = "building the result"
            timings["total"] = _ms_since(started)
            return _answer_of(job, summary, tally, timings)
        except WorkerError as e:
            timings["total"] = _ms_since(started)
            if e.retryable:
                log.warning("job will be retried: %s", e.message, extra={"fields": _ids(job) | {"code": e.code}})
                raise
            return error_result(job, e, timings)
        except Exception as e:  # noqa: BLE001 - a bug: answered once as internal, never retried
            timings["total"] = _ms_since(started)
            return error_result(job, self._incident(e, stage, job), timings)

    # -- fan-out: one job over many instances (worker.fanout) -------------------------------------------

    def _fan_out_mode(self, job: Job) -> str:
        """never, auto or always, for this job on this worker. Raises InvalidJob when it asks for what cannot be."""
        spec = job.spec.get("fan_out") or {}
        mode = spec.get("mode", "auto")
        if mode == "never":
            return mode
        if job.message_id is None:  # HTTP answers in its own response: one instance
            if mode == "always":
                raise InvalidJob("fan_out.mode always needs a Pub/Sub job: an HTTP job runs on one instance")
            return "never"
        if self.stores is None:
            if mode == "always":
                raise InvalidJob("fan_out.mode always: this worker has no fan-out settings "
                                 "(PARTIALS_BUCKET and SHARD_TOPIC)")
            return "never"
        return mode

    def _open_run(self, job: Job, store: ObjectStore, head: list[tuple[str, int]]) -> None:
        """Make the job a run: its first shards from the keys listed so far and S3's folders under the prefix."""
        if self.coordinator is None or job.message_id is None:
            raise RuntimeError("fan-out without its stores")
        self.coordinator.open_run(job, store, head, _folders(store, job.prefix))

    def _handle_run_work(self, data: Any, event_id: str | None, topic: str, *, dead: bool) -> None:
        """A message from the shard topics: a shard's, a merge task's, or the sweeper's. Raises only ``Retryable``;
        a bug is logged with an incident and the message acknowledged (the sweeper finds what it left)."""
        work = _work_of(data)
        fields = {"topic": topic, "message_id": event_id}
        if work is None or self.coordinator is None:
            log.error("a message on the shard topics that is no run work, or no fan-out settings: dropped",
                      extra={"fields": fields})
            return
        kind, attributes = work
        try:
            if kind == "shard":
                self.coordinator.handle_shard(attributes["run_id"], attributes["shard_id"],
                                              _generation(attributes.get("generation")), dead=dead)
            elif kind == "merge" and not dead:
                self.coordinator.handle_merge(attributes["run_id"], attributes["task_id"])
            elif kind == "sweep" and not dead:
                self.coordinator.sweep()
            else:  # a dead-lettered merge task or sweep: the sweeper publishes stalled tasks again
                log.warning("dead-lettered %s message: left to the sweeper", kind,
                            extra={"fields": fields | attributes})
        except WorkerError as e:
            if e.retryable:
                log.warning("run work will be retried: %s", e.message, extra={"fields": fields | attributes})
                raise
            self._incident(e, f"handling a {kind} message", None)
        except Exception as e:  # noqa: BLE001 - a bug: logged with an incident; the sweeper ends the run
            self._incident(e, f"handling a {kind} message", None)

    # -- what the coordinator asks of its host (worker.fanout.coordinator.Host) ---------------------------

    def read_objects(self, store: ObjectStore, listed: Iterable[tuple[str, int]], job: Job, *, deadline: float,
                     tally: Tally) -> Summary:
        """Summarize listed objects as a job of this worker does (its concurrency and limits)."""
        concurrency = self.settings.full_mode_concurrency if job.mode == "full" else self.settings.read_concurrency
        return summarize_listing(store, listed, mode=job.mode, columns=job.columns, deadline=deadline,
                                 concurrency=concurrency, tally=tally, limits=self.settings.limits())

    def send(self, result: dict, job: Job | None) -> tuple[dict, str]:
        return self._send(result, job)

    def incident(self, exc: BaseException, stage: str, ref: Job | JobRef | None) -> Internal:
        return self._incident(exc, stage, ref)

    def answer_of(self, job: Job, summary: Summary, tally: Tally, timings: dict[str, float]) -> dict:
        return _answer_of(job, summary, tally, timings)

    def turn(self, full: bool, *, what: str, step: str, fields: dict):
        return self._turn(full, what=what, step=step, fields=fields)

    @contextmanager
    def _turn(self, full: bool, *, what: str, step: str, fields: dict):
        """A full-mode read takes one of the instance's FULL_MODE_JOBS turns (a job's or a shard's), waiting at
        most half the deadline (the wait counts toward the request's own timeout); then it is handed back to
        Pub/Sub rather than start too late to finish."""
        if not full:
            yield
            return
        if not self._full_turns.acquire(timeout=self.settings.job_deadline_seconds / 2):
            log.warning("full-mode read handed back: the instance is busy with others",
                        extra={"fields": fields | {"code": "unavailable"}})
            raise Unavailable(f"the instance ran {self.settings.full_mode_jobs} full-mode {what} for "
                              f"{self.settings.job_deadline_seconds / 2:.0f}s; try again later",
                              details={"step": step})
        try:
            yield
        finally:
            self._full_turns.release()


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
    keys. An object's own fault (its bytes, or S3 refusing that object) costs that object: it is skipped with
    its reason (``tally.refused`` counts access refusals). Any other fault, met in whichever reader thread, ends
    the call with it as it comes (``worker.summary.is_objects_own``): ``Retryable`` (the delivery is retried),
    another ``WorkerError`` (the job's answer), anything else (a bug). Raises ``StoppedAtDeadline`` once
    ``clock()`` passes ``deadline``: no new key is taken from the listing, no new object started, and in full
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
                raise StoppedAtDeadline(key=key, done=done, total=None)
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
        fetch_failed: list[BaseException] = []  # what the store raised: it decides, whatever the decoder made of it

        def fetch(start: int, end: int) -> bytes:
            try:
                return store.fetch(key, start, end)
            except BaseException as e:
                fetch_failed.append(e)
                raise

        try:
            if mode == "full":
                from worker.profile import profile_object  # numpy and sketches only for full mode

                summary = profile_object(key, size, fetch, columns=wanted, should_stop=late, limits=limits)
            else:
                summary = summarize_object(key, size, fetch, wanted, limits=limits)
            if not fetch_failed:
                return summary
            error: BaseException = fetch_failed[0]  # a decoder took the store's fault for a bad object
        except StoppedAtDeadline:
            raise
        except Exception as e:  # noqa: BLE001 - judged below: skipped, or raised again as it is
            error = fetch_failed[0] if fetch_failed else e
        # Only the object's own fault costs the object; anything else ends the delivery by its class, from this
        # reader thread too (worker.summary.is_objects_own has the rule). The exception leaves no reference in this
        # frame, which its traceback holds: a cycle would keep one object's buffers alive until the next collection.
        try:
            if not is_objects_own(error, fetched=bool(fetch_failed)):
                raise error
            if isinstance(error, Forbidden):
                with lock:
                    tally.refused += 1
                    tally.first_refusal = tally.first_refusal or f"{key}: {error.message}"
            if isinstance(error, WorkerError):
                return Summary.of_skipped(key, _reason(error.message))
            log.warning("object skipped: %s: %s", type(error).__name__, key, exc_info=error)
            return Summary.of_skipped(key, _reason(f"unreadable ({type(error).__name__}): {error}"))
        finally:
            del error
            fetch_failed.clear()

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
                raise StoppedAtDeadline(key=first[0])
            total.add(one(first))
        except StoppedAtDeadline:
            raise StoppedAtDeadline(key=first[0], done=0, total=1) from None  # the listing is complete: one object
        done = 1
        progressed()
        return total.build()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="reader") as pool:
        in_flight: set = set()

        def collect(futures: set) -> None:
            nonlocal done
            while futures:
                # Taken out of the set, never named: a raised fault's traceback holds these frames, and a reference
                # from them to its future (which holds the fault) would be a cycle that keeps the job's partial
                # summaries alive until the next garbage collection.
                total.add(futures.pop().result())
                done += 1
                progressed()

        try:
            # A bounded window in flight, so memory does not grow with the prefix.
            for item in chain([first, second], keys):
                if late():
                    raise StoppedAtDeadline(key=item[0], done=done, total=tally.parquet if listing_complete else None)
                in_flight.add(pool.submit(one, item))
                if len(in_flight) >= 2 * concurrency:
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    collect(finished)
            collect(in_flight)
        except StoppedAtDeadline as e:
            for future in in_flight:
                future.cancel()
            raise StoppedAtDeadline(key=e.key, done=done, total=tally.parquet if listing_complete else None) from None
        except BaseException:
            for future in in_flight:
                future.cancel()
            raise
    return total.build()


def _work_of(data: Any) -> tuple[str, dict[str, str]] | None:
    """(kind, attributes) of a message on the shard topics: ``shard`` (run_id, shard_id, generation), ``merge``
    (run_id, task_id) or ``sweep``; None for anything else."""
    try:
        attributes = data["message"].get("attributes") or {}
    except (KeyError, TypeError, AttributeError):
        return None
    if not isinstance(attributes, dict):
        return None
    kind = attributes.get("kind")
    needs = {"shard": ("run_id", "shard_id"), "merge": ("run_id", "task_id"), "sweep": ()}.get(kind)
    if needs is None or not all(isinstance(attributes.get(k), str) and attributes[k] for k in needs):
        return None
    return kind, {k: v for k, v in attributes.items() if isinstance(v, str)}


def _generation(text: str | None) -> int | None:
    """A shard message's generation attribute (None: a message from before generations, or none given)."""
    with contextlib.suppress(TypeError, ValueError):
        return int(text)
    return None


def _topic_of(source: str | None) -> str | None:
    """The topic (projects/P/topics/T) an event's source names: //pubsub.googleapis.com/projects/P/topics/T,
    as functions-framework makes it from the push path (and Eventarc from the trigger's topic)."""
    if not source:
        return None
    at = source.find("projects/")
    topic = source[at:] if at >= 0 else ""
    return topic if is_topic_path(topic) else None


def _head(listed: Iterator[tuple[str, int]], most_objects: int | None, most_bytes: int | None
          ) -> tuple[list[tuple[str, int]] | None, Iterator[tuple[str, int]]]:
    """The keys listed until a fan-out threshold is reached (None: the listing ended first, or no threshold),
    and the listing to go on with (all of it, when it ended first)."""
    if most_objects is None:
        return [], listed
    head: list[tuple[str, int]] = []
    size = 0
    for item in listed:
        head.append(item)
        size += item[1]
        if len(head) >= most_objects or (most_bytes is not None and size >= most_bytes):
            return head, listed
    return None, iter(head)


def _folders(store: ObjectStore, prefix: str) -> list[str]:
    """S3's folders under ``prefix``, looking into a lone folder (up to MAX_PREFIX_DEPTH levels): where the key
    space can be cut without listing it."""
    found: list[str] = []
    for _ in range(MAX_PREFIX_DEPTH):
        folders = store.common_prefixes(prefix)
        found += folders
        if len(folders) != 1:
            break
        prefix = folders[0]
    return found


def _answer_of(job: Job, summary: Summary, tally: Tally, timings: dict[str, float]) -> dict:
    """The ok result of a job whose objects were read; raises NotFound/Forbidden when none could be."""
    if tally.parquet == 0:
        raise NotFound(_nothing_found(job, tally.listed))
    if tally.refused == tally.parquet:
        raise Forbidden(f"every Parquet object under s3://{job.bucket}/{job.prefix} was refused "
                        f"({tally.parquet}); the first: {tally.first_refusal}",
                        details={"objects_refused": tally.refused})
    fields = summary.to_dict()
    if job.columns is not None:
        fields["missing_columns"] = sorted(set(job.columns) - set(summary.fields) - summary.partition_columns)
    return ok_result(job, fields, timings)


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
