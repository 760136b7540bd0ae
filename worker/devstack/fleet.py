"""Several function instances behind a Cloud Run-like balancer, with their own jobs and shard topics: how a
fanned-out run is served on the local stack (tests, ``bench/fanout.py`` and ``./dev demo``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from worker.devstack.balancer import CloudRunBalancer
from worker.devstack.processes import stop_all


class Fleet:
    """``instances`` functions behind a balancer (``concurrency`` requests each), fed by a jobs topic and a
    shard topic (with its dead-letter topic) of their own, all pushed to the balancer."""

    def __init__(self, stack, name: str, *, instances: int = 3, concurrency: int = 4,
                 env: dict[str, str] | None = None, pending_timeout_s: float = 5.0):
        self.stack = stack
        self.name = name
        self.instances = instances
        self.concurrency = concurrency
        self.env = dict(env or {})
        self.pending_timeout_s = pending_timeout_s
        self.functions: list = []
        self.balancer: CloudRunBalancer | None = None
        # The names add_shard_topics gives: the functions know their topics before the topics exist.
        self.shard_topic = f"projects/{stack.project}/topics/{name}-shards"
        self.dead_letter_topic = f"projects/{stack.project}/topics/{name}-shards-dead-letter"
        self.jobs_topic = ""

    def start(self) -> Fleet:
        env = self.env | {"SHARD_TOPIC": self.shard_topic, "SHARD_DEAD_LETTER_TOPIC": self.dead_letter_topic}
        with ThreadPoolExecutor(self.instances) as pool:
            self.functions = list(pool.map(lambda i: self.stack.start_function(f"{self.name}-{i}", **env),
                                           range(self.instances)))
        self.balancer = CloudRunBalancer([f"http://{fn.address}" for fn in self.functions],
                                         concurrency=self.concurrency, pending_timeout_s=self.pending_timeout_s).start()
        topics = self.stack.add_shard_topics(self.name, self.balancer.url)
        assert topics == (self.shard_topic, self.dead_letter_topic), topics
        self.jobs_topic = self.stack.add_push_subscription(f"{self.name}-jobs", self.balancer)
        return self

    def stop(self) -> None:
        stop_all(self.functions)
        if self.balancer is not None:
            self.balancer.stop()

    def __enter__(self) -> Fleet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
