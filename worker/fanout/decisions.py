"""What each step of a run writes: pure functions of the records a transaction read (``View``) to a ``Change``.

A store runs them in transactions, maybe more than once (Firestore retries a transaction that lost to
contention), so they are pure and repeatable. Each one writes only the documents of its own step: a shard's
transactions read and write shard records only, never the run's; the run's record changes only when the run
opens, is claimed for its merge, advances a merge level, answers, or is redriven (see ``records``).

Fencing: a delivery that reads a shard or merges holds a lease with an owner token; every commit of that work
checks the token, so a delivery that outlived its lease (Cloud Run lets a timed-out request run on) and lost it
to another changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from worker.fanout.records import (
    ANSWERED,
    DISPATCHED,
    DONE,
    FAILED,
    MERGING,
    QUEUED,
    RUNNING,
    TASK_DONE,
    TERMINAL,
    Change,
    Counts,
    Decide,
    Lease,
    MergeTask,
    RunRecord,
    ShardRecord,
    View,
    shard_id_of,
)

DISPATCH_BATCH = 100  # queued shards one commit dispatches at most (the rest go with later commits)

Sized = tuple[str | None, str | None, int | None, int | None]
"""A range and what a listing knew of it: (start, stop, objects, bytes), None where unknown."""


def new_shards(run_id: str, ranges: Sequence[Sized]) -> list[ShardRecord]:
    """Queued shards for ``ranges``, each knowing its size where the listing that carved it did."""
    return [ShardRecord(shard_id_of(run_id, a, b), a, b, expected_objects=n, expected_bytes=size)
            for a, b, n, size in ranges]


def dispatch(candidates: Sequence[ShardRecord], room: int, now: float) -> list[ShardRecord]:
    """Mark up to ``room`` queued ``candidates`` dispatched (a new generation each); returns them.

    The cap on shards in flight is kept without a counter in any one document (that document would be written by
    every shard): each commit that finishes a shard passes its own slot on, and takes up the room a count of the
    dispatched shards, made just before, showed. Commits that count at the same moment may each take the same room,
    so the cap is soft: exceeded at most by the room those concurrent commits saw, and only until they finish."""
    sent = []
    for shard in candidates:
        if len(sent) >= min(room, DISPATCH_BATCH):
            break
        if shard.state == QUEUED:
            shard.state = DISPATCHED
            shard.generation += 1
            shard.dispatched_at = now
            shard.lease = Lease()
            sent.append(shard)
    return sent


def ids(shards: Sequence[ShardRecord]) -> list[tuple[str, int]]:
    """(shard ID, generation) of each: what a shard message carries."""
    return [(s.shard_id, s.generation) for s in shards]


# -- a shard's delivery ---------------------------------------------------------------------------------


@dataclass
class Leased:
    """What taking a shard's lease found: ``leased`` (this delivery reads it), ``done`` (finished: nothing to read),
    ``stale`` (an older copy of its message, or queued again by a redrive), ``busy`` (another delivery holds a live
    lease: it reads the range), ``gone`` (no such shard)."""

    verdict: str
    shard: ShardRecord | None = None


def lease_shard(shard_id: str, generation: int | None, token: str, now: float, seconds: float) -> Decide:
    """A delivery takes the shard's lease, unless another holds a live one; counts the attempt."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None:
            return Change(value=Leased("gone"))
        if shard.state in TERMINAL:
            return Change(value=Leased("done", shard))
        if shard.state == QUEUED or (generation is not None and generation < shard.generation):
            return Change(value=Leased("stale", shard))
        if shard.lease.live(now) and not shard.lease.held_by(token):
            return Change(value=Leased("busy", shard))
        mine = shard.copy()
        mine.lease = Lease(token, now + seconds)
        mine.attempts += 1
        return Change(shards=[mine], value=Leased("leased", mine.copy()))

    return decide


def renew_shard(shard_id: str, token: str, now: float, seconds: float) -> Decide:
    """Extend the lease while reading; the value: False if the lease is no longer this delivery's."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None or shard.state != DISPATCHED or not shard.lease.held_by(token):
            return Change(value=False)
        mine = shard.copy()
        mine.lease.expires = now + seconds
        return Change(shards=[mine], value=True)

    return decide


def release_shard(shard_id: str, token: str, *, uncount: bool = False) -> Decide:
    """Give the lease up (a delivery handing its shard back): the next delivery need not wait for it to expire.
    ``uncount``: the delivery's read succeeded and only its commit failed (contention, Firestore unavailable), which
    is no fault of the range: the attempt does not count toward failing it."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None or shard.state != DISPATCHED or not shard.lease.held_by(token):
            return Change(value=False)
        mine = shard.copy()
        mine.lease = Lease()
        if uncount:
            mine.attempts = max(0, mine.attempts - 1)
        return Change(shards=[mine], value=True)

    return decide


@dataclass
class HandOff:
    """What a shard's early hand-off committed: its own range's end, and the shards to publish. ``lost``: the lease
    is no longer this delivery's (nothing written)."""

    stop: str | None
    publish: list[tuple[str, int]] = field(default_factory=list)
    lost: bool = False


def hand_off(run_id: str, shard_id: str, token: str, own_stop: str, room: int, now: float) -> Decide:
    """The shard keeps [start, own_stop) and hands [own_stop, stop) to a new shard, once: an attempt that finds the
    hand-off made (by an earlier delivery) adopts its end instead. The child is dispatched if the run has room."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None or shard.state != DISPATCHED or not shard.lease.held_by(token):
            return Change(value=HandOff(stop=None if shard is None else shard.stop, lost=True))
        if shard.children:  # an earlier attempt handed the rest on
            return Change(value=HandOff(stop=shard.stop))
        (child,) = new_shards(run_id, [(own_stop, shard.stop, None, None)])
        mine = shard.copy()
        mine.stop, mine.children = own_stop, [child.shard_id]
        mine.expected_objects = mine.expected_bytes = None  # its listing measures it now
        sent = dispatch([child], room, now)
        mine.dispatched += [s.shard_id for s in sent]
        mine.published = not sent
        return Change(shards=[mine, child], value=HandOff(stop=own_stop, publish=ids(sent)))

    return decide


@dataclass
class Outcome:
    """How one delivery of a shard ended: done (its partial stored) or failed (dead-lettered, or refused)."""

    state: str
    partial: str | None = None
    read_stop: str | None = None  # done: the end of the range this delivery read (the record's, when it began)
    covered_stop: str | None = None  # done early: the shard read [start, covered_stop); children take the rest
    handed: Sequence[Sized] = ()
    counts: Counts = field(default_factory=Counts)
    first_refusal: str | None = None
    seconds: float = 0.0
    error: str | None = None
    measured: tuple[int | None, int | None] = (None, None)  # failed: (objects, bytes) in its range, where known


@dataclass
class Finish:
    """What a shard's commit decided: whether it was recorded (else ``why`` not), and the shards to publish."""

    recorded: bool
    why: str = ""
    publish: list[tuple[str, int]] = field(default_factory=list)


def finish(run_id: str, shard_id: str, outcome: Outcome, now: float, room: int, *, token: str | None = None,
           generation: int | None = None) -> Decide:
    """Record a shard's outcome once, with its hand-offs, passing its slot (plus ``room``) to its own new children
    (``pass_slots`` passes what is left to queued shards, in a transaction of its own).

    A read (``token``) is recorded only by the lease's holder; a dead letter (no token) only for the current
    generation and while no delivery holds a live lease (a copy of the same message being read elsewhere)."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None:
            return Change(value=Finish(False, "gone"))
        if shard.state in TERMINAL:
            return Change(value=Finish(False, "duplicate"))
        if shard.state == QUEUED:  # a stale message from before a redrive: it gets a new one when dispatched
            return Change(value=Finish(False, "stale"))
        if token is not None and not shard.lease.held_by(token):
            return Change(value=Finish(False, "lease lost"))
        if token is None and ((generation is not None and generation != shard.generation) or shard.lease.live(now)):
            return Change(value=Finish(False, "stale copy" if generation != shard.generation else "being read"))
        if outcome.state == DONE and (outcome.partial is None or outcome.read_stop != shard.stop):
            return Change(value=Finish(False, "stale range"))
        children = new_shards(run_id, outcome.handed)
        mine = shard.copy()
        mine.state, mine.partial, mine.error = outcome.state, outcome.partial, outcome.error
        mine.counts, mine.first_refusal, mine.seconds = outcome.counts, outcome.first_refusal, outcome.seconds
        mine.children += [c.shard_id for c in children]
        mine.lease = Lease()
        if outcome.covered_stop is not None:
            mine.stop = outcome.covered_stop
        if outcome.state == DONE:
            mine.expected_objects, mine.expected_bytes = outcome.counts.listed, outcome.counts.bytes_listed
        elif outcome.measured[0] is not None:
            mine.expected_objects, mine.expected_bytes = outcome.measured
        sent = dispatch(children, room + 1, now)  # its own slot, and the room counted
        mine.dispatched += [s.shard_id for s in sent]
        mine.published = not sent
        return Change(shards=[mine, *children], value=Finish(True, publish=ids(sent)))

    return decide


def claim(now: float):
    """What dispatching one queued shard writes (``RunStore.claim_queued``): a new generation, dispatched now."""

    def change(shard: ShardRecord) -> ShardRecord:
        (sent,) = dispatch([shard], 1, now)
        return sent

    return change


def passed_on(shard_id: str, sent: Sequence[tuple[str, int]]) -> Decide:
    """Record on a finished shard the queued shards it passed its slot to (published after, and again by a
    redelivery if that failed)."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None or not sent:
            return Change(value=False)
        mine = shard.copy()
        mine.dispatched += [s for s, _ in sent if s not in mine.dispatched]
        mine.published = False
        return Change(shards=[mine], value=True)

    return decide


def mark_published(shard_id: str) -> Decide:
    """Every shard the shard's commits dispatched has been published: a redelivery need not publish them again."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None or shard.published:
            return Change(value=False)
        mine = shard.copy()
        mine.published = True
        return Change(shards=[mine], value=True)

    return decide


def lost_partial(shard_id: str, reason: str) -> Decide:
    """A done shard whose partial cannot be read at merge time (deleted by the bucket's lifecycle, or written by
    another format version): its range is recorded failed, so the answer counts it unread and a redrive reads it.
    What it listed stays, as the measure of what was not read."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if shard is None or shard.state != DONE:
            return Change(value=False)
        lost = shard.copy()
        lost.state, lost.partial, lost.error = FAILED, None, reason
        return Change(shards=[lost], value=True)

    return decide


def redispatch(shard_id: str, now: float, generation: int | None = None) -> Decide:
    """Send a dispatched shard again as a new generation, when its messages ran out through no read of its own
    failing (the sweeper: its deliveries stopped; a dead letter: its attempts went on 429s and busy leases). The
    value: (shard ID, generation), or None (it moved on meanwhile, or ``generation`` is no longer current)."""

    def decide(view: View) -> Change:
        shard = view.shards.get(shard_id)
        if (shard is None or shard.state != DISPATCHED or shard.lease.live(now)
                or (generation is not None and generation != shard.generation)):
            return Change(value=None)
        mine = shard.copy()
        mine.generation += 1
        mine.dispatched_at = now
        mine.republished += 1
        return Change(shards=[mine], value=(mine.shard_id, mine.generation))

    return decide


# -- the run ---------------------------------------------------------------------------------------------


@dataclass
class Claim:
    """What claiming a run's merge found: ``claimed`` (this delivery starts the merge), ``resumed`` (it takes over a
    merge whose holder's lease expired), ``busy`` (a live holder), ``no`` (running with shards open, answered, or
    gone)."""

    verdict: str
    run: RunRecord | None = None


def claim_merge(token: str, now: float, seconds: float) -> Decide:
    """Take the run's lease to build its answer: a running run becomes merging (a new merge round); a merging run
    whose holder's lease expired is taken over where it stands."""

    def decide(view: View) -> Change:
        run = view.run
        if run is None or run.state == ANSWERED:
            return Change(value=Claim("no", run))
        if run.lease.live(now) and not run.lease.held_by(token):
            return Change(value=Claim("busy", run))
        new = run.copy()
        verdict = "resumed" if run.state == MERGING else "claimed"
        if run.state == RUNNING:
            new.state, new.merge_round, new.merge_level, new.merge_tasks = MERGING, run.merge_round + 1, 0, 0
        new.lease = Lease(token, now + seconds)
        new.updated_at = now
        return Change(run=new, value=Claim(verdict, new.copy()))

    return decide


def advance(round_: int, level: int, token: str, now: float, seconds: float) -> Decide:
    """Take the run's lease to build the level above ``level`` (or the answer), once every task of ``level`` is done:
    of the deliveries that see it done, the first to commit; the value: the run, or None."""

    def decide(view: View) -> Change:
        run = view.run
        if (run is None or run.state != MERGING or run.merge_round != round_ or run.merge_level != level
                or (run.lease.live(now) and not run.lease.held_by(token))):
            return Change(value=None)
        new = run.copy()
        new.lease = Lease(token, now + seconds)
        new.updated_at = now
        return Change(run=new, value=new.copy())

    return decide


def set_level(token: str, level: int, tasks: int, now: float) -> Decide:
    """The holder made ``tasks`` merge tasks at ``level`` and gives the lease up: the tasks' own leases hold them."""

    def decide(view: View) -> Change:
        run = view.run
        if run is None or run.state != MERGING or not run.lease.held_by(token):
            return Change(value=False)
        new = run.copy()
        new.merge_level, new.merge_tasks, new.lease, new.updated_at = level, tasks, Lease(), now
        return Change(run=new, value=True)

    return decide


def renew_run(token: str, now: float, seconds: float) -> Decide:
    def decide(view: View) -> Change:
        run = view.run
        if run is None or run.state != MERGING or not run.lease.held_by(token):
            return Change(value=False)
        new = run.copy()
        new.lease.expires = now + seconds
        return Change(run=new, value=True)

    return decide


def release_run(token: str, *, reopen: bool = False) -> Decide:
    """Give the run's lease up (on a retryable fault, so a redelivery need not wait for it to expire); ``reopen``:
    the claim found shards open (a redrive raced it), so the run is running again."""

    def decide(view: View) -> Change:
        run = view.run
        if run is None or not run.lease.held_by(token):
            return Change(value=False)
        new = run.copy()
        new.lease = Lease()
        if reopen and run.state == MERGING:
            new.state, new.merge_level, new.merge_tasks = RUNNING, 0, 0
        return Change(run=new, value=True)

    return decide


def answered(token: str, result_message_id: str, now: float) -> Decide:
    """Record the run's answer as published by the lease's holder; the value: how many answers the run has had, or
    None if the lease was lost meanwhile (another holder may publish too: both answers carry the run's ID)."""

    def decide(view: View) -> Change:
        run = view.run
        if run is None or run.state != MERGING or not run.lease.held_by(token):
            return Change(value=None)
        new = run.copy()
        new.state, new.answers, new.answered_at = ANSWERED, run.answers + 1, now
        new.result_message_id, new.lease, new.updated_at = result_message_id, Lease(), now
        return Change(run=new, value=new.answers)

    return decide


def requeue(failed: Sequence[str], redrives: int, room: int, now: float) -> Decide:
    """Redrive: put failed shards (read just before, as of the run's ``redrives`` count) back in the queue, all in one
    commit, so the run cannot close (and answer) between two of them; the run opens again. A concurrent redrive that
    committed first changed the count: this one then changes nothing. The value: shards to publish, or None."""

    def decide(view: View) -> Change:
        run = view.run
        if run is None or run.redrives != redrives or run.state == MERGING or not failed:
            return Change(value=None)
        again = []
        for shard_id in failed:
            shard = view.shards.get(shard_id)
            if shard is not None and shard.state == FAILED:
                shard = shard.copy()
                shard.state, shard.attempts, shard.error, shard.partial = QUEUED, 0, None, None
                shard.counts, shard.first_refusal, shard.lease, shard.republished = Counts(), None, Lease(), 0
                shard.dispatched, shard.published = [], True
                again.append(shard)
        if not again:
            return Change(value=None)
        new = run.copy()
        new.state, new.lease, new.merge_level, new.merge_tasks = RUNNING, Lease(), 0, 0
        new.redrives += 1
        new.updated_at = now
        mine = {s.shard_id for s in again}
        sent = dispatch([*again, *[q.copy() for q in view.queued if q.shard_id not in mine]], room, now)
        return Change(run=new, shards=[*again, *[s for s in sent if s.shard_id not in mine]], value=ids(sent))

    return decide


def set_cap(max_in_flight: int, now: float) -> Decide:
    """Change a run's cap on shards in flight (the coordinator then dispatches what the new cap has room for)."""

    def decide(view: View) -> Change:
        run = view.run
        if run is None:
            return Change(value=False)
        new = run.copy()
        new.max_in_flight, new.max_in_flight_requested, new.updated_at = max_in_flight, None, now
        return Change(run=new, value=True)

    return decide


# -- merge tasks -------------------------------------------------------------------------------------------


def lease_task(task_id: str, token: str, now: float, seconds: float) -> Decide:
    """A delivery takes a merge task's lease; the value: the task (leased), or a verdict string."""

    def decide(view: View) -> Change:
        task = view.tasks.get(task_id)
        if task is None:
            return Change(value="gone")
        if task.state == TASK_DONE:
            return Change(value="done")
        if task.lease.live(now) and not task.lease.held_by(token):
            return Change(value="busy")
        mine = task.copy()
        mine.lease, mine.attempts = Lease(token, now + seconds), task.attempts + 1
        return Change(tasks=[mine], value=mine.copy())

    return decide


def renew_task(task_id: str, token: str, now: float, seconds: float) -> Decide:
    def decide(view: View) -> Change:
        task = view.tasks.get(task_id)
        if task is None or task.state == TASK_DONE or not task.lease.held_by(token):
            return Change(value=False)
        mine = task.copy()
        mine.lease.expires = now + seconds
        return Change(tasks=[mine], value=True)

    return decide


def release_task(task_id: str, token: str) -> Decide:
    def decide(view: View) -> Change:
        task = view.tasks.get(task_id)
        if task is None or task.state == TASK_DONE or not task.lease.held_by(token):
            return Change(value=False)
        mine = task.copy()
        mine.lease = Lease()
        return Change(tasks=[mine], value=True)

    return decide


def task_done(task_id: str, token: str, output: str, lost: Sequence[str], seconds: float) -> Decide:
    """Record a merge task's output, by its lease's holder only; the value: True if recorded."""

    def decide(view: View) -> Change:
        task = view.tasks.get(task_id)
        if task is None or task.state == TASK_DONE or not task.lease.held_by(token):
            return Change(value=False)
        mine = task.copy()
        mine.state, mine.output, mine.lost, mine.seconds, mine.lease = TASK_DONE, output, list(lost), seconds, Lease()
        return Change(tasks=[mine], value=True)

    return decide


def resweep_task(task_id: str, now: float) -> Decide:
    """The sweeper's step for an open task with no live lease: count it, to publish again; the value: the count."""

    def decide(view: View) -> Change:
        task = view.tasks.get(task_id)
        if task is None or task.state == TASK_DONE or task.lease.live(now):
            return Change(value=None)
        mine = task.copy()
        mine.swept += 1
        return Change(tasks=[mine], value=mine.swept)

    return decide


def plan_level(round_: int, level: int, inputs: Sequence[str], fan_in: int, now: float) -> list[MergeTask]:
    """The merge tasks of one level over ``inputs``: consecutive groups of at most ``fan_in``."""
    from worker.fanout.records import task_id_of

    return [MergeTask(task_id_of(round_, level, i), round_, level, i, list(inputs[at:at + fan_in]), created_at=now)
            for i, at in enumerate(range(0, len(inputs), fan_in))]

