"""The fan-out fault scenarios of tests/unit/test_fanout_faults.py again, on the real stores: runs in the Firestore
emulator through a fault layer that aborts contending transactions as Firestore does
(worker/devstack/firestore_faults.py), partials in fake-gcs-server. Each test has a collection and a blob prefix of
its own. Shard and merge messages stay in the test's hands (the scenarios deliver them in the order they need)."""

import uuid

import pytest

from tests.unit.support import MemoryShardQueue
from tests.unit.test_fanout_faults import (  # noqa: F401 - collected here, with this module's ``stores``
    test_a_bug_while_building_the_answer_answers_internal_with_an_incident,
    test_a_copy_that_comes_while_another_delivery_holds_the_lease_comes_back_later_and_reads_nothing,
    test_a_dead_letter_copy_from_before_a_redrive_does_not_fail_the_redriven_range,
    test_a_delivery_that_outlived_its_shard_lease_records_nothing_and_the_new_holder_reads_once,
    test_a_job_whose_attributes_are_firestore_reserved_names_fans_out_and_answers,
    test_a_merge_that_outlives_its_lease_publishes_nothing_once_another_delivery_answered,
    test_a_redelivered_parent_publishes_its_children_only_if_they_may_never_have_been,
    test_a_run_left_merging_by_a_dead_holder_is_answered_by_the_sweeper,
    test_a_run_whose_messages_are_all_lost_is_found_by_the_sweeper_and_answers,
    test_a_run_whose_ranges_all_failed_does_not_answer_that_the_prefix_has_no_parquet,
    test_a_shard_dead_lettered_with_no_failed_read_of_its_own_is_sent_again_not_failed,
)
from worker.adapters.firestore import FirestoreRunStore
from worker.devstack.firestore_faults import faulty_client
from worker.devstack.stack import FIRESTORE_DATABASE
from worker.fanout.coordinator import Stores

pytestmark = pytest.mark.timeout(120)


class _Prefixed:
    """The partials bucket under a prefix of the test's own (run IDs repeat across the scenarios)."""

    def __init__(self, blobs, prefix: str):
        self._blobs, self._prefix = blobs, prefix

    def put_once(self, name: str, data: bytes) -> bool:
        return self._blobs.put_once(self._prefix + name, data)

    def get(self, name: str, **options) -> bytes:
        return self._blobs.get(self._prefix + name, **options)


@pytest.fixture
def stores(stack):
    tag = f"faults-{uuid.uuid4().hex[:10]}"
    client = faulty_client(project=stack.project, database=FIRESTORE_DATABASE)
    yield Stores(runs=FirestoreRunStore(client, tag), blobs=_Prefixed(stack.blob_store(), tag + "/"),
                 shards=MemoryShardQueue())
    client.close()
