"""Partial summaries in a Cloud Storage bucket: ``worker.runs.BlobStore`` with ``google-cloud-storage``.

Blobs are written create-only (``if_generation_match=0``): a redelivered shard that computes the same
partial finds it there and leaves it alone. They are read with a bound (PARTIAL_MAX_BYTES): a ranged
download of at most one byte more than it, so an oversized blob is refused without being held. The client
reads ``STORAGE_EMULATOR_HOST`` itself, which is how the local stack points it at fake-gcs-server.
"""

from __future__ import annotations

import base64
import contextlib
import os

import google.auth.exceptions
import google_crc32c
import requests
from google.api_core import exceptions as google_errors
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from worker.errors import ConfigError, NotFound, Unavailable
from worker.partials import MAX_PAYLOAD_BYTES, PartialTooLarge

# Faults a later attempt can get past (the client has already retried them within its own deadline: uploads
# with a generation precondition count as idempotent, so they are retried too).
TRANSIENT = (google_errors.ServiceUnavailable, google_errors.InternalServerError, google_errors.BadGateway,
             google_errors.GatewayTimeout, google_errors.TooManyRequests, google_errors.DeadlineExceeded,
             google_errors.RetryError, google_errors.Unauthorized, requests.ConnectionError, requests.Timeout,
             google.auth.exceptions.TransportError, ConnectionError, TimeoutError)
TIMEOUT_S = 60.0  # one call, the client's retries of transient faults included (its own default is 120 s)
CONTENT_TYPE = "application/octet-stream"


class GcsBlobStore:
    """``BlobStore`` on one bucket."""

    def __init__(self, client: storage.Client, bucket: str, *, timeout: float = TIMEOUT_S,
                 max_bytes: int = MAX_PAYLOAD_BYTES):
        self._client = client
        self.bucket = bucket
        self._bucket = client.bucket(bucket)
        self.max_bytes = max_bytes  # what get() reads at most, unless it is told (PARTIAL_MAX_BYTES)
        # Every call is idempotent (writes are create-only), so every call may be retried.
        self._options = {"timeout": timeout, "retry": DEFAULT_RETRY.with_timeout(timeout)}

    @classmethod
    def from_settings(cls, project: str | None, bucket: str, **options) -> GcsBlobStore:
        """A store on ``bucket`` (fake-gcs-server, anonymously, when STORAGE_EMULATOR_HOST is set)."""
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            client = storage.Client(project=project, credentials=AnonymousCredentials())
        else:
            client = storage.Client(project=project)
        return cls(client, bucket, **options)

    def put_once(self, name: str, data: bytes) -> bool:
        """Create ``name`` unless it exists. (If a first try's answer is lost and the client's retry then finds
        the blob, this says False although this call made it: names hold a digest of their content, so the
        blob there is the same either way.)"""
        blob = self._bucket.blob(name)
        with self._errors(f"writing gs://{self.bucket}/{name}"):
            try:
                blob.upload_from_string(data, content_type=CONTENT_TYPE, if_generation_match=0, **self._options)
            except google_errors.PreconditionFailed:
                return False
        return True

    def get(self, name: str, *, max_bytes: int | None = None) -> bytes:
        """The blob's bytes; ``NotFound`` if there is none; ``PartialTooLarge`` if it holds more than ``max_bytes``
        (the store's ``max_bytes`` when None), told by downloading at most one byte more than that."""
        bound = self.max_bytes if max_bytes is None else max_bytes
        where = f"gs://{self.bucket}/{name}"
        blob = self._bucket.blob(name)
        with self._errors(f"reading {where}"):
            try:
                # The client skips its checksum on a range (the answer is 206): _verify does it on the whole blob.
                data = blob.download_as_bytes(start=0, end=bound, checksum=None, **self._options)
            except google_errors.NotFound:
                raise NotFound(f"{where} does not exist") from None
            except google_errors.RequestRangeNotSatisfiable:
                return b""  # how Cloud Storage answers a range of an empty blob
            if len(data) > bound:
                size = self._size(blob)
                held = f"{size} bytes" if size is not None else f"more than {bound} bytes"
                raise PartialTooLarge(f"{where} holds {held}, over the limit of {bound} bytes (PARTIAL_MAX_BYTES)",
                                      size=size if size is not None else bound + 1, max_bytes=bound)
        self._verify(data, blob.crc32c, where)
        return data

    def _size(self, blob: storage.Blob) -> int | None:
        """The blob's size, for the message only (None if its metadata cannot be read now)."""
        try:
            blob.reload(timeout=10.0, retry=None)
        except Exception:  # noqa: BLE001 (the refusal stands without the figure)
            return None
        return blob.size

    @staticmethod
    def _verify(data: bytes, crc32c: str | None, where: str) -> None:
        """Compare the bytes with the blob's CRC32C (the X-Goog-Hash of the answer, which is the whole blob's even
        for a range), as the client does for a download that is not a range; a mismatch is a transfer fault."""
        if crc32c and base64.b64encode(google_crc32c.value(data).to_bytes(4, "big")).decode() != crc32c:
            raise Unavailable(f"Cloud Storage failed reading {where}: its CRC32C does not match the bytes received",
                              details={"step": "storage"})

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    @contextlib.contextmanager
    def _errors(self, what: str):
        """Cloud Storage's faults as the worker's: transient ones ``Unavailable``, a bucket that is missing or closed
        to the worker ``ConfigError``; anything else (a bug) propagates."""
        try:
            yield
        except TRANSIENT as e:
            raise Unavailable(f"Cloud Storage failed {what}: {type(e).__name__}", details={"step": "storage"}) from None
        except google_errors.Forbidden:
            raise ConfigError(f"the worker may not use bucket {self.bucket} (PARTIALS_BUCKET; grant its service "
                              f"account roles/storage.objectUser on it) while {what}",
                              details={"step": "storage"}) from None
        except google_errors.NotFound:
            # get() turns a missing blob into the worker's NotFound before this; here the bucket is missing.
            raise ConfigError(f"bucket {self.bucket} does not exist (PARTIALS_BUCKET) while {what}",
                              details={"step": "storage"}) from None
