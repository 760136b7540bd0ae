"""What deploy/terraform sets for delivery and scale, read from the .tf files themselves (python-hcl2),
so the burst bench and test follow deploy/ when it changes.

Only the few settings a burst depends on: the jobs push subscription's acknowledgement deadline,
retry backoff and dead-letter attempts, and the function's max instances and per-instance concurrency.
A ``${var.x}`` reference is taken from the variable's default.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

TERRAFORM = Path(__file__).resolve().parents[2] / "deploy" / "terraform"
_VAR = re.compile(r"^\$\{var\.(\w+)\}$")


@dataclass(frozen=True)
class DeliverySettings:
    """The knobs that decide whether a burst dead-letters jobs that never ran."""

    max_instances: int
    concurrency: int  # max concurrent requests per instance
    ack_deadline_s: int
    minimum_backoff_s: float
    maximum_backoff_s: float
    max_delivery_attempts: int

    def but(self, **changes) -> DeliverySettings:
        return dataclasses.replace(self, **changes)

    def subscription(self, dead_letter_topic: str, *, retry_policy: bool = True) -> dict:
        """Keyword settings of a push subscription as deploy/ makes it (``LocalStack.add_push_subscription``)."""
        settings: dict = {"ack_deadline_seconds": self.ack_deadline_s,
                          "dead_letter_policy": {"dead_letter_topic": dead_letter_topic,
                                                 "max_delivery_attempts": self.max_delivery_attempts}}
        if retry_policy:
            settings["retry_policy"] = {"minimum_backoff": {"seconds": int(self.minimum_backoff_s)},
                                        "maximum_backoff": {"seconds": int(self.maximum_backoff_s)}}
        return settings

    def backoff_s(self, attempt: int) -> float:
        """Pub/Sub's wait after failed attempt ``attempt`` (1-based): doubling from the minimum, capped."""
        return min(self.maximum_backoff_s, self.minimum_backoff_s * 2 ** (attempt - 1))

    def survivable_s(self, pending_timeout_s: float) -> float:
        """How long a job can keep meeting a full service and still not be dead-lettered: every attempt
        waits the pending timeout for its 429, and the backoffs between attempts add up."""
        attempts = self.max_delivery_attempts
        return attempts * pending_timeout_s + sum(self.backoff_s(k) for k in range(1, attempts))


def _seconds(value) -> float:
    text = str(value).strip()
    return float(text[:-1]) if text.endswith("s") else float(text)


def load(terraform_dir: Path = TERRAFORM) -> DeliverySettings:
    """deploy/terraform's delivery settings (variables at their defaults)."""
    import hcl2  # a dev/test dependency: the deployed function never imports this module

    resources: dict = {}
    variables: dict = {}
    for path in sorted(Path(terraform_dir).glob("*.tf")):
        with open(path, encoding="utf-8") as f:
            parsed = hcl2.load(f)
        for block in parsed.get("resource", []):
            for kind, named in block.items():
                resources.setdefault(_unquote(kind), {}).update({_unquote(k): v for k, v in named.items()})
        for block in parsed.get("variable", []):
            variables.update({_unquote(k): v for k, v in block.items()})

    def value(raw):
        raw = _unquote(raw)
        ref = _VAR.match(raw) if isinstance(raw, str) else None
        return _unquote(variables[ref.group(1)]["default"]) if ref else raw

    subscription = resources["google_pubsub_subscription"]["jobs"]
    service = resources["google_cloudfunctions2_function"]["worker"]["service_config"][0]
    retry = subscription["retry_policy"][0]
    return DeliverySettings(
        max_instances=int(value(service["max_instance_count"])),
        concurrency=int(value(service.get("max_instance_request_concurrency", 1))),
        ack_deadline_s=int(value(subscription["ack_deadline_seconds"])),
        minimum_backoff_s=_seconds(value(retry["minimum_backoff"])),
        maximum_backoff_s=_seconds(value(retry["maximum_backoff"])),
        max_delivery_attempts=int(value(subscription["dead_letter_policy"][0]["max_delivery_attempts"])))


def _unquote(value):
    # python-hcl2 (7.x) keeps string literals' quotes; older versions drop them.
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value
