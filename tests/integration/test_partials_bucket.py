"""Partials read with a bound (worker/adapters/gcs.py) against fake-gcs-server alone: a blob over the bound is
refused after a download of at most one byte more than it, naming its size and the bound; one within it comes
back whole, checked against its CRC32C."""

import uuid

import pytest
import requests

from worker.adapters.gcs import GcsBlobStore
from worker.devstack.processes import Service, free_port
from worker.devstack.stack import fake_gcs_binary
from worker.errors import Unavailable
from worker.partials import MAX_PAYLOAD_BYTES, CorruptPartial, PartialTooLarge, decode, encode
from worker.summary import Summary

BUCKET = "partials-bound"


@pytest.fixture(scope="module")
def storage(tmp_path_factory, monkeypatch_module):
    port = free_port()
    service = Service("fake-gcs-server", [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port",
                                          str(port), "-backend", "memory", "-external-url", f"http://127.0.0.1:{port}",
                                          "-log-level", "warn"],
                      port=port, log_dir=tmp_path_factory.mktemp("gcs"), ready_path="/storage/v1/b")
    service.start()
    try:
        service.wait_ready()
        endpoint = f"http://127.0.0.1:{port}"
        requests.post(f"{endpoint}/storage/v1/b", params={"project": "p"}, json={"name": BUCKET},
                      timeout=10).raise_for_status()
        monkeypatch_module.setenv("STORAGE_EMULATOR_HOST", endpoint)
        yield endpoint
    finally:
        service.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture
def blobs(storage):
    store = GcsBlobStore.from_settings("p", BUCKET, max_bytes=1 << 20)
    yield store
    store.close()


def media_lengths(store: GcsBlobStore) -> list[int]:
    """The Content-Length of every media download ``store`` receives from now on (before its body is read)."""
    lengths: list[int] = []

    def hook(response, *args, **kwargs):
        if "alt=media" in response.url:
            lengths.append(int(response.headers["Content-Length"]))

    store._client._http.hooks["response"].append(hook)
    return lengths


def test_a_blob_over_the_bound_is_refused_after_one_byte_more_than_it(blobs):
    name = f"run-{uuid.uuid4().hex[:8]}/big.partial"
    assert blobs.put_once(name, bytes(8 << 20))  # 8 MiB; the store's bound is 1 MiB
    lengths = media_lengths(blobs)
    with pytest.raises(PartialTooLarge, match=rf"gs://{BUCKET}/{name} holds 8388608 bytes, over the limit of "
                                              r"1048576 bytes \(PARTIAL_MAX_BYTES\)") as refused:
        blobs.get(name)
    assert refused.value.details == {"size": 8 << 20, "max_bytes": 1 << 20}
    assert isinstance(refused.value, CorruptPartial) and not refused.value.retryable  # the merge records it lost
    assert lengths == [(1 << 20) + 1]  # not the 8 MiB
    # A bound given to the call wins over the store's.
    with pytest.raises(PartialTooLarge, match="over the limit of 4096 bytes"):
        blobs.get(name, max_bytes=4096)
    assert blobs.get(name, max_bytes=8 << 20) == bytes(8 << 20)
    assert lengths[-1] == 8 << 20


def test_a_blob_at_the_bound_comes_back_whole(blobs):
    name = f"run-{uuid.uuid4().hex[:8]}/exact.partial"
    data = bytes(range(256)) * 4096  # 1 MiB exactly
    assert blobs.put_once(name, data)
    assert blobs.get(name) == data
    assert blobs.get(name, max_bytes=len(data)) == data
    with pytest.raises(PartialTooLarge, match=f"holds {len(data)} bytes, over the limit of {len(data) - 1} bytes"):
        blobs.get(name, max_bytes=len(data) - 1)


def test_a_partial_round_trips_through_the_bucket_within_the_bound(blobs):
    name = f"run-{uuid.uuid4().hex[:8]}/shard.partial"
    summary = Summary(files=3, rows=10, bytes=123)
    assert blobs.put_once(name, encode(summary))
    assert decode(blobs.get(name, max_bytes=MAX_PAYLOAD_BYTES), max_bytes=MAX_PAYLOAD_BYTES) == summary


def test_an_empty_blob_reads_as_empty_and_decodes_as_corrupt(blobs):
    # Cloud Storage answers a range of an empty object with 416 (fake-gcs-server too).
    name = f"run-{uuid.uuid4().hex[:8]}/empty.partial"
    assert blobs.put_once(name, b"")
    assert blobs.get(name) == b""
    with pytest.raises(CorruptPartial, match="shorter than the 13-byte header"):
        decode(blobs.get(name))


def test_bytes_that_do_not_match_the_blobs_crc32c_are_a_transfer_fault(blobs):
    name = f"run-{uuid.uuid4().hex[:8]}/checked.partial"
    assert blobs.put_once(name, b"partial bytes")
    blob = blobs._bucket.blob(name)
    blob.reload()
    GcsBlobStore._verify(b"partial bytes", blob.crc32c, name)  # what the server says is the whole blob's hash
    with pytest.raises(Unavailable, match="CRC32C does not match") as fault:
        GcsBlobStore._verify(b"partial bytez", blob.crc32c, name)
    assert fault.value.retryable
