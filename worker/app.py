"""The edge: builds the real collaborators from Settings, once per instance."""

from __future__ import annotations

import threading

from worker.adapters.runtime import bound_allocator_retention
from worker.config import Settings
from worker.logs import setup_logging
from worker.results import http_status, to_json
from worker.service import Worker

_lock = threading.Lock()
_worker: Worker | None = None


def build_storage(settings: Settings):
    """S3 access: federated when a role is configured (always, in the function), else boto3's default chain."""
    from worker.adapters.aws import AwsStorage, role_session_name

    if not settings.role_arn:
        return AwsStorage.default_chain(region=settings.region, max_connections=settings.read_concurrency,
                                        max_attempts=settings.aws_max_attempts)
    from worker.adapters.google import token_source

    return AwsStorage.federated(
        settings.role_arn,
        token_source(settings.token_source, settings.audience, service_account=settings.token_service_account,
                     path=settings.token_file),
        session_name=role_session_name(settings.service, settings.revision),
        region=settings.region,
        duration_seconds=settings.sts_duration_seconds,
        max_connections=settings.read_concurrency,
        max_attempts=settings.aws_max_attempts,
    )


def build_worker(settings: Settings) -> Worker:
    """A Worker wired to STS/S3 (via the metadata server's ID token) and to the reply topic."""
    storage = build_storage(settings)
    publisher = None
    if settings.reply_topic:
        from worker.adapters.pubsub import ResultPublisher

        publisher = ResultPublisher(settings.reply_topic)
    return Worker(settings, storage, publisher, build_stores(settings))


def build_stores(settings: Settings):
    """Where fanned-out runs keep their records, partials and shard messages (None: fan-out is off)."""
    if not settings.fanout_enabled:
        return None
    from worker.adapters.firestore import FirestoreRunStore
    from worker.adapters.gcs import GcsBlobStore
    from worker.adapters.pubsub import ShardPublisher
    from worker.fanout.coordinator import Stores

    return Stores(runs=FirestoreRunStore.from_settings(settings.project, settings.firestore_database,
                                                       settings.runs_collection,
                                                       retention_days=settings.runs_retention_days),
                  blobs=GcsBlobStore.from_settings(settings.project, settings.partials_bucket,
                                                   max_bytes=settings.partial_max_bytes),
                  shards=ShardPublisher(settings.shard_topic))


def get_worker(settings: Settings) -> Worker:
    """The instance's Worker, built on first use and kept: credentials and clients are reused."""
    global _worker
    if _worker is None:
        with _lock:
            if _worker is None:
                setup_logging()
                bound_allocator_retention()  # process-wide, so here at the edge: before the instance's first job
                _worker = build_worker(settings)
    return _worker


def http_response(result: dict) -> tuple[bytes, int, dict[str, str]]:
    """A Flask response tuple for a result document: strict JSON, as published."""
    return to_json(result), http_status(result), {"Content-Type": "application/json"}
