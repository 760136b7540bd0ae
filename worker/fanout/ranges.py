"""Key ranges of a prefix: how a run's key space is cut, and how a shard lists its own range. Pure."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence

SPLIT_WAYS = 4  # a shard out of time hands its unread keys to this many new shards
INITIAL_SHARDS_MAX = 400  # shards a run starts with (created in one batch; Firestore allows 500 writes)
MAX_PREFIX_DEPTH = 3  # levels of "folders" looked into for the first split




def after(key: str) -> str:
    """The smallest key greater than ``key``: a range starting here holds every key past ``key``."""
    return key + "\x00"


def start_after_of(start: str | None) -> str | None:
    """ListObjectsV2's StartAfter (exclusive) for a range that starts at ``start`` (inclusive): any string
    below ``start``; its prefix one character shorter is the tightest that needs no key arithmetic."""
    return start[:-1] or None if start else None


def list_range(store, prefix: str, start: str | None, stop: str | None) -> Iterator[tuple[str, int]]:
    """(key, size) of the objects of ``prefix`` with ``start <= key < stop``, in key order, page by page."""
    for key, size in store.list(prefix, start_after=start_after_of(start)):
        if start is not None and key < start:
            continue
        if stop is not None and key >= stop:
            return
        yield key, size


def ranges_from(bounds: Iterable[str], start: str | None = None, stop: str | None = None
                ) -> list[tuple[str | None, str | None]]:
    """[start, b1), [b1, b2), ..., [bn, stop) for the bounds strictly inside (start, stop), sorted, unique."""
    inside = sorted({b for b in bounds if (start is None or b > start) and (stop is None or b < stop)})
    edges: list[str | None] = [start, *inside, stop]
    return list(itertools.pairwise(edges))


def thin(bounds: Sequence[str], most: int) -> list[str]:
    """At most ``most`` of ``bounds`` (sorted), evenly spaced."""
    bounds = sorted(set(bounds))
    if len(bounds) <= most:
        return bounds
    step = len(bounds) / most
    return sorted({bounds[int(i * step)] for i in range(most)})


def first_split(keys: Sequence[str], folders: Sequence[str], *, per_shard: int, most: int = INITIAL_SHARDS_MAX
                ) -> list[tuple[str | None, str | None]]:
    """The ranges a run starts with, covering the whole prefix: one per ``per_shard`` of the ``keys`` already
    listed (the first of the prefix, in order), then S3's folders past them (each the start of a range that
    lists itself), then the rest. Always at least one range; together they cover every key exactly once."""
    bounds: list[str] = [keys[i] for i in range(per_shard, len(keys), per_shard)]
    if keys:
        bounds.append(after(keys[-1]))
    tail_start = after(keys[-1]) if keys else None
    bounds += [f for f in folders if tail_start is None or f > tail_start]
    return ranges_from(thin(bounds, most - 1))


def split_unread(keys: Sequence[str], stop: str | None, ways: int = SPLIT_WAYS) -> list[tuple[str | None, str | None]]:
    """Ranges for keys a shard could not read in time (``keys`` in order, the first of them the first unread),
    up to ``stop``: ``ways`` ranges of about equal numbers of keys."""
    if not keys:
        return []
    step = max(1, -(-len(keys) // ways))
    bounds = [keys[i] for i in range(step, len(keys), step)]
    return ranges_from(bounds, keys[0], stop)


def sizes_of(ranges: Sequence[tuple[str | None, str | None]], listed: Sequence[tuple[str, int]], *,
             known_until: str | None) -> list[tuple[int | None, int | None]]:
    """(objects, bytes) in each range, from the keys ``listed`` (in order), which are every key before
    ``known_until`` (None: every key of the ranges); (None, None) for a range reaching past that."""
    out: list[tuple[int | None, int | None]] = []
    i = 0
    for start, stop in ranges:
        if known_until is not None and (stop is None or stop > known_until):
            out.append((None, None))
            continue
        while i < len(listed) and start is not None and listed[i][0] < start:
            i += 1
        n = size = 0
        while i < len(listed) and (stop is None or listed[i][0] < stop):
            n += 1
            size += listed[i][1]
            i += 1
        out.append((n, size))
    return out


def blob_name(run_id: str, shard_id: str, start: str | None, stop: str | None) -> str:
    """Where a shard's partial goes: the same range read twice (a duplicate) names the same blob."""
    digest = hashlib.sha256("\x00".join(["" if x is None else "s" + x for x in (start, stop)])
                            .encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{run_id}/{shard_id}/{digest}.partial"
