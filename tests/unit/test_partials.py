"""Partial summaries as bytes (worker/partials.py): exact round trips, merges of decoded partials that
equal merges of the originals, and refusal of anything that is not a partial this worker wrote."""

import copy
import dataclasses
import datetime as dt
import hashlib
import io
import os
import pickle
import posix
import random
import subprocess
import sys
import time
import zlib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from worker import partials
from worker.devstack.hostile import corpus
from worker.partials import HEADER_BYTES, MAGIC, VERSION, CorruptPartial, decode, encode
from worker.profile import ColumnProfile, profile_object
from worker.summary import MAX_SKIPPED_LISTED, ColumnStats, FieldInfo, Summary, SummaryBuilder, summarize_object
from worker.values import ValueType

from .support import Ranged

REPO = Path(__file__).resolve().parents[2]
MODES = {"metadata": summarize_object, "full": profile_object}


# ---- helpers ------------------------------------------------------------------------------------

def parquet(table: pa.Table, **options) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def read(mode: str, key: str, data: bytes) -> Summary:
    return MODES[mode](key, len(data), Ranged(data))


def coupons(hll: bytes) -> bytes:
    """An HLL sketch's compact bytes with the coupons of its list or set mode in order: a sketch rebuilt
    from its bytes holds the same coupons, in a hash table laid out by the order they were put back."""
    head = hll[0] * 4  # preamble ints: 2 in list mode, 3 in set mode, 10 in HLL mode (registers, kept as they are)
    if hll[0] not in (2, 3):
        return hll
    return hll[:head] + b"".join(sorted(hll[i:i + 4] for i in range(head, len(hll), 4)))


def exact(obj):
    """A form of ``obj`` that is equal only for exactly equal values: types, float bits, Decimal
    digits and exponent, sketch contents (a profile by its state), whatever the order of sets and maps."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        state = vars(obj)
        if isinstance(obj, ColumnProfile):
            state = obj.__getstate__()
            state["hll"] = state["hll"] and coupons(state["hll"])
        return type(obj).__name__, tuple((k, exact(v)) for k, v in sorted(state.items()))
    if isinstance(obj, Mapping):
        return "map", tuple(sorted((k, exact(v)) for k, v in obj.items()))
    if isinstance(obj, frozenset):
        return "frozenset", tuple(sorted(exact(x) for x in obj))
    if isinstance(obj, tuple):
        return "tuple", tuple(exact(x) for x in obj)
    if isinstance(obj, float):
        return "float", obj.hex()
    if isinstance(obj, Decimal):
        return "Decimal", obj.as_tuple()
    return type(obj).__name__, obj


def round_trip(summary: Summary) -> Summary:
    back = decode(encode(summary))
    assert exact(back) == exact(summary)
    assert back.to_dict() == summary.to_dict()
    return back


def many_types(seed: int, rows: int = 120) -> pa.Table:
    """One column of (nearly) every kind, with nulls, extremes and values past float64's exact range."""
    rng = random.Random(seed)
    big = 2**53

    def maybe(values, every=7):
        return [None if i % every == 3 else v for i, v in enumerate(values)]

    ints = [rng.randrange(-10**6, 10**6) for _ in range(rows)]
    return pa.table({
        "id": pa.array(range(seed * 1000, seed * 1000 + rows), pa.int64()),
        "big": pa.array(maybe([big + 1 + 2 * rng.randrange(10**6) for _ in range(rows)]), pa.int64()),
        "low": pa.array([-(2**63) + rng.randrange(10) for _ in range(rows)], pa.int64()),
        "u64": pa.array([2**64 - 1 - rng.randrange(10**9) for _ in range(rows)], pa.uint64()),
        "i8": pa.array([rng.randrange(-128, 128) for _ in range(rows)], pa.int8()),
        "dec": pa.array(maybe([Decimal(f"{rng.randrange(-10**30, 10**30)}.{rng.randrange(10**4):04d}")
                               for _ in range(rows)]), pa.decimal128(38, 4)),
        "dec256": pa.array([Decimal(f"{rng.randrange(10**60)}.{rng.randrange(10**10):010d}") for _ in range(rows)],
                           pa.decimal256(76, 10)),
        "ts_tz": pa.array(maybe([1_700_000_000_000_000_000 + rng.randrange(10**15) for _ in range(rows)]),
                          pa.timestamp("ns", tz="Europe/Paris")),
        "ts_ms": pa.array([rng.randrange(-(10**13), 10**13) for _ in range(rows)], pa.timestamp("ms")),
        "date": pa.array([dt.date(1, 1, 1) + dt.timedelta(days=rng.randrange(3_000_000)) for _ in range(rows)]),
        "time": pa.array([rng.randrange(86_400 * 10**6) for _ in range(rows)], pa.time64("us")),
        "dur": pa.array([rng.randrange(-(10**12), 10**12) for _ in range(rows)], pa.duration("s")),
        "s": pa.array(maybe([rng.choice(["", "Ada", "zoë", "日本", "🙂", "a\x00b"]) + str(i) for i in range(rows)])),
        "long_s": pa.array([rng.choice("xyz") * 200 + str(rng.randrange(100)) for _ in range(rows)]),
        "bin": pa.array(maybe([bytes(rng.randrange(256) for _ in range(rng.randrange(6))) for _ in range(rows)]),
                        pa.binary()),
        "fsb": pa.array([rng.randbytes(4) for _ in range(rows)], pa.binary(4)),
        "f": pa.array(maybe([rng.choice([float("nan"), -0.0, float("inf"), rng.uniform(-1e300, 1e300), 0.1])
                             for _ in range(rows)]), pa.float64()),
        "f32": pa.array([rng.uniform(-1, 1) for _ in range(rows)], pa.float32()),
        "nan_only": pa.array([float("nan")] * rows, pa.float64()),
        "b": pa.array(maybe([rng.random() < 0.5 for _ in range(rows)])),
        "all_null": pa.nulls(rows, pa.int64()),
        "null_type": pa.nulls(rows),
        "list": pa.array(maybe([list(range(rng.randrange(4))) for _ in range(rows)]), pa.list_(pa.int64())),
        "struct": pa.array(maybe([{"x": rng.uniform(-5, 5), "y": rng.choice(["p", "q"])} for _ in range(rows)])),
        "map": pa.array([[("k", i)] for i in ints], pa.map_(pa.string(), pa.int32())),
        "dict": pa.array([rng.choice(["red", "green", "blue"]) for _ in range(rows)]).dictionary_encode(),
    })


MANY = parquet(many_types(1), row_group_size=50)
KEY = "lake/year=2024/month=07/day=01/part-0.parquet"


# ---- exact round trips ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_a_summary_of_every_kind_of_column_round_trips_exactly(mode):
    summary = read(mode, KEY, MANY)
    assert summary.partition_columns == {"year", "month", "day"} and summary.row_groups == 3
    held = {type(st.min) for st in summary.stats.values()}
    assert {int, float, Decimal, bytes, bool} <= held  # the test covers each kind of comparable value
    assert summary.stats["big"].min > 2**53 and summary.stats["u64"].max > 2**63
    if mode == "full":
        assert {"numeric", "string", "binary", "temporal", "boolean", "nested", "null"} <= {
            p.kind for p in summary.profiles.values()}
        assert summary.profiles["year"].partition and summary.profiles["f"].nan_count > 0
    back = round_trip(summary)
    assert back.stats["dec"].min.as_tuple().exponent == -4  # digits and scale, not a rounded number
    assert back.stats["big"].max == summary.stats["big"].max and type(back.stats["big"].max) is int


@pytest.mark.parametrize("rows", [100, 30_000], ids=["sparse", "dense"])
def test_a_profile_round_trips_with_its_sketches(rows):
    data = parquet(pa.table({"x": np.random.default_rng(rows).normal(size=rows)}))
    profile = profile_object("x.parquet", len(data), Ranged(data)).profiles["x"]
    back = decode(encode(Summary(profiles={"x": profile}))).profiles["x"]
    assert back.kll.serialize() == profile.kll.serialize()
    if rows > 10_000:  # HLL mode: the registers, byte for byte
        assert back.hll.serialize_compact()[0] == 10
        assert back.hll.serialize_compact() == profile.hll.serialize_compact()
    assert coupons(back.hll.serialize_compact()) == coupons(profile.hll.serialize_compact())
    assert back.hll.get_estimate() == profile.hll.get_estimate()
    # the rebuilt sketches are live: they keep merging
    merged = back.merge(profile).to_dict()
    assert merged["count"] == 2 * rows and merged["distinct_approx"] == profile.to_dict()["distinct_approx"]


def test_column_profiles_pickle_through_their_state():
    profile = profile_object(KEY, len(MANY), Ranged(MANY)).profiles["f"]
    state = profile.__getstate__()
    assert isinstance(state["hll"], bytes) and isinstance(state["kll"], bytes)
    clones = [pickle.loads(pickle.dumps(profile)), copy.deepcopy(profile)]  # noqa: S301 (our own bytes)
    # compared before to_dict, whose quantile query sorts the KLL sketch's level 0 in place (same items)
    assert [exact(clone) for clone in clones] == [exact(profile)] * 2
    assert [clone.to_dict() for clone in clones] == [profile.to_dict()] * 2
    del state["partition"]
    with pytest.raises(ValueError, match="exactly its fields"):
        ColumnProfile.__new__(ColumnProfile).__setstate__(state)


def test_empty_and_skipped_only_summaries_round_trip():
    round_trip(Summary())
    builder = SummaryBuilder()
    for i in range(MAX_SKIPPED_LISTED + 50):
        builder.skip(f"lake/{i:04d}-données.csv", "not a .parquet key")
    builder.add(read("metadata", "lake/bad.parquet", b"PAR1 not really PAR1"))
    skipped = builder.build()
    assert skipped.skipped_count == MAX_SKIPPED_LISTED + 51 and len(skipped.skipped) == MAX_SKIPPED_LISTED
    back = round_trip(skipped)
    assert back.skipped == skipped.skipped


# (20,000 columns profiled take seconds: metadata mode covers that width)
HOSTILE = [(c, mode) for c in corpus() if not c.bench_only for mode in MODES
           if not (mode == "full" and c.name == "wide-20k")]


@pytest.mark.parametrize(("case", "mode"), HOSTILE, ids=[f"{c.name}-{mode}" for c, mode in HOSTILE])
def test_the_hostile_corpus_round_trips(case, mode):
    data = case.build()
    summary = MODES[mode](case.key, len(data), Ranged(data), **(
        {"columns": case.job["columns"]} if "columns" in case.job else {}))
    round_trip(summary)


# ---- merging decoded partials ---------------------------------------------------------------------

def lake() -> list[tuple[str, bytes]]:
    """Objects of one prefix, in listing order: partitions, type drift, a missing column, a type conflict,
    zero rows, and objects that are skipped."""
    drift = many_types(2, rows=90)
    drift = drift.set_column(0, "id", drift["id"].cast(pa.int32())).drop_columns(["s"])
    conflict = many_types(3, rows=60)
    conflict = conflict.set_column(conflict.schema.get_field_index("b"), "b", pa.array(["yes", None] * 30))
    conflict = conflict.append_column("extra", pa.array([1.5] * 60))
    return [
        ("lake/notes.txt", b"not parquet"),
        ("lake/year=2023/month=01/a.parquet", parquet(many_types(1, rows=120), row_group_size=40)),
        ("lake/year=2023/month=02/b.parquet", parquet(drift)),
        ("lake/year=2024/month=01/c.parquet", parquet(conflict, compression="zstd")),
        ("lake/year=2024/month=02/d.parquet", parquet(many_types(4, rows=10).slice(0, 0))),
        ("lake/year=2024/month=03/e.parquet", b"PAR1" + bytes(20) + b"PAR1"),
        ("lake/year=2024/month=04/f.parquet", parquet(many_types(5, rows=100), row_group_size=30)),
    ]


def without_float_moments(out: dict) -> tuple[dict, dict]:
    """``out`` without mean and stddev, and those apart (float sums that depend on the merge grouping)."""
    out = copy.deepcopy(out)
    moments = {name: (p.pop("mean", None), p.pop("stddev", None)) for name, p in out.get("profile", {}).items()}
    return out, moments


@pytest.mark.parametrize("mode", MODES)
def test_merging_decoded_partials_gives_the_one_instance_answer(mode):
    parts = [read(mode, key, data) for key, data in lake()]
    one_instance = SummaryBuilder()
    for part in parts:
        one_instance.add(part, copy=True)
    expected = one_instance.build().to_dict()
    assert expected["skipped_count"] == 2 and expected["files"] == 5 and expected["schema_conflicts"] == ["id", "b"]

    shards = [parts[0:2], parts[2:4], parts[4:5], parts[5:]]
    partial = [Summary.merge_all(shard) for shard in shards]
    blobs = [encode(p) for p in partial]
    fanned = SummaryBuilder()
    for blob in blobs:
        fanned.add(decode(blob))  # owns the decoded profiles: their sketches absorb the others in place
    merged = fanned.build().to_dict()
    # the codec changes nothing: decoded partials merge exactly as the originals do
    assert merged == Summary.merge_all(partial).to_dict()
    assert (Summary.merge_all(decode(b) for b in reversed(blobs)).to_dict()
            == Summary.merge_all(reversed(partial)).to_dict())
    # and that is the one-instance answer, but for mean and stddev: float sums grouped otherwise round
    # otherwise (Chan's formula loses digits where the spread is tiny beside the mean: int64 near 2**53
    # spread over 1e6 differs by ~3e-8 between groupings, with or without the codec)
    (rest, moments), (rest_expected, moments_expected) = without_float_moments(merged), without_float_moments(expected)
    assert rest == rest_expected
    for name, pair in moments.items():
        for got, want in zip(pair, moments_expected[name], strict=True):
            assert got == want or got == pytest.approx(want, rel=1e-6), name


def test_large_partials_merge_as_the_originals_do_but_for_kll_randomness():
    # past KLL's k (1,000) values, compaction flips coins: only the quartiles may differ, within its error
    values = np.random.default_rng(3).normal(0, 1, 12_000)
    files = [parquet(pa.table({"x": values[i::3], "n": np.arange(4000) + i})) for i in range(3)]
    parts = [profile_object(f"big/{i}.parquet", len(d), Ranged(d)) for i, d in enumerate(files)]
    merged = Summary.merge_all(decode(encode(p)) for p in parts).to_dict()
    expected = Summary.merge_all(parts).to_dict()
    quartiles = {}
    for out in (merged, expected):
        for name, tolerance in (("x", 0.05), ("n", 100)):
            assert out["profile"][name]["count"] == 12_000
            got = out["profile"][name].pop("quartiles_approx")
            assert got == pytest.approx(quartiles.setdefault(name, got), abs=tolerance)
    assert merged == expected


# ---- deterministic bytes, small blobs -------------------------------------------------------------

def test_equal_summaries_encode_to_equal_bytes_whatever_their_order():
    summary = Summary.merge_all(read("full", key, data) for key, data in lake())
    reordered = dataclasses.replace(  # maps in another order, sets built in another order
        summary, fields=dict(reversed(summary.fields.items())), stats=dict(reversed(summary.stats.items())),
        profiles=dict(reversed(summary.profiles.items())),
        compression=frozenset(sorted(summary.compression, reverse=True)))
    assert list(reordered.stats) != list(summary.stats)
    assert encode(reordered) == encode(summary)
    # metadata mode merges to the same content in any order, so to the same bytes
    metadata = [read("metadata", key, data) for key, data in lake()]
    assert encode(Summary.merge_all(metadata)) == encode(Summary.merge_all(reversed(metadata)))


ENCODE_IN_A_PROCESS = """
import hashlib, sys
sys.path.insert(0, sys.argv[1])
from tests.unit.test_partials import lake, read
from worker.partials import encode
from worker.summary import Summary
print(hashlib.sha256(encode(Summary.merge_all(read("metadata", k, d) for k, d in lake()))).hexdigest())
"""


def test_the_bytes_do_not_depend_on_the_hash_seed():
    digests = set()
    for seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-c", ENCODE_IN_A_PROCESS, str(REPO)], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, cwd=REPO, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        digests.add(run.stdout.strip())
    expected = hashlib.sha256(encode(Summary.merge_all(read("metadata", k, d) for k, d in lake()))).hexdigest()
    assert digests == {expected}


def wide(columns: int = 200, rows: int = 10_000) -> bytes:
    rng = np.random.default_rng(11)
    kinds = [lambda: pa.array(rng.integers(0, 1 << 62, rows)), lambda: pa.array(rng.normal(size=rows)),
             lambda: pa.array(rng.choice(["alpha", "beta", "gamma", "delta"], rows)),
             lambda: pa.array(rng.integers(0, 10, rows), pa.int32())]
    return parquet(pa.table({f"column_{i:03d}": kinds[i % 4]() for i in range(columns)}))


def test_a_200_column_partial_stays_small():
    data = wide()
    full = encode(profile_object("w/x.parquet", len(data), Ranged(data)))
    metadata = encode(summarize_object("w/x.parquet", len(data), Ranged(data)))
    # Measured: ~2.3 MB in full mode (100 high-cardinality numeric columns at ~21 KB each: a KLL sketch of
    # k=1000 is ~16 KB of doubles that do not compress, a dense HLL 16 KB that compresses to ~5 KB;
    # low-cardinality columns ~0.2 KB), ~4.5 KB in metadata mode.
    assert len(full) < 2_600_000
    assert len(metadata) < 8_000


# ---- what is refused ------------------------------------------------------------------------------

def frame(payload: bytes, *, version: int = VERSION, size: int | None = None) -> bytes:
    """Bytes with a valid header around any payload (what a hostile writer of partials could produce)."""
    declared = len(payload) if size is None else size
    return MAGIC + bytes([version]) + declared.to_bytes(8, "little") + zlib.compress(payload)


def payload_of(data: bytes):
    return pickle.loads(zlib.decompress(data[HEADER_BYTES:]))  # noqa: S301 (bytes this test encoded)


class RunsACommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_pickle_naming_os_system_is_refused_and_nothing_runs(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    evil = pickle.dumps(RunsACommand(f"touch {marker}"))
    nested = pickle.dumps((partials._names(), (RunsACommand(f"touch {marker}"),)))
    calls = []
    for module in (os, posix):  # were the global loaded, the recorder would run, not a shell
        monkeypatch.setattr(module, "system", lambda command: calls.append(command) or 0)
    for payload in (evil, nested):
        with pytest.raises(CorruptPartial, match=r"names the global (os|posix)\.system") as refused:
            decode(frame(payload))
        assert refused.value.code == "internal" and refused.value.retryable is False
        assert str(marker) not in str(refused.value)
    assert calls == [] and not marker.exists()


@pytest.mark.parametrize("payload", [
    pickle.dumps(Summary()),  # the dataclass itself, pickled the ordinary way
    pickle.dumps(Decimal("1.5")),
    pickle.dumps(frozenset({"a"}), protocol=2),  # builtins.frozenset
    pickle.dumps(ValueType("number", "int64")),
    pickle.dumps(eval),
    b"cworker.summary\nsummarize_object\n.",
    b"\x80\x04\x8c\x0eworker.summary\x8c\x0fSummary.of_file\x93.",
], ids=["Summary", "Decimal", "frozenset", "ValueType", "eval", "function", "dotted"])
def test_every_global_is_refused(payload):
    with pytest.raises(CorruptPartial, match="names the global"):
        decode(frame(payload))


GOOD = encode(read("full", KEY, MANY))


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "shorter than the 13-byte header"),
    (b"PSUM", "shorter than the 13-byte header"),
    (b"PAR1" + GOOD[4:], "magic bytes are wrong"),
    (random.Random(0).randbytes(5000), "magic bytes are wrong"),
    (GOOD[:4] + bytes([0]) + GOOD[5:], "format version 0; this worker reads version 1"),
    (GOOD[:4] + bytes([VERSION + 1]) + GOOD[5:], f"format version {VERSION + 1}"),
    (GOOD[:4] + bytes([255]) + GOOD[5:], "format version 255"),
    (GOOD[:HEADER_BYTES], "truncated"),
    (GOOD[:len(GOOD) // 2], "truncated"),
    (GOOD[:-1], "truncated"),
    (GOOD + b"\x00", "1 stray bytes after the compressed payload"),
    (GOOD[:HEADER_BYTES] + b"\xff" * 200, "compressed payload is corrupt"),
    (GOOD[:5] + (10).to_bytes(8, "little") + GOOD[HEADER_BYTES:], "longer than the 10 bytes its header declares"),
    (GOOD[:5] + (2 * len(zlib.decompress(GOOD[HEADER_BYTES:]))).to_bytes(8, "little") + GOOD[HEADER_BYTES:],
     "payload is .* bytes, its header declares"),
    (GOOD[:5] + (1 << 40).to_bytes(8, "little") + GOOD[HEADER_BYTES:], "over the limit"),
    (frame(b"not a pickle at all"), "not a valid pickle"),
    (frame(pickle.dumps((1, 2))[:-1]), "not a valid pickle"),
    (frame(pickle.dumps((1, 2)) + b"junk"), "4 stray bytes after the pickled payload"),
    (frame(pickle.dumps("a str")), "str at the top, not a pair"),
    (frame(pickle.dumps(((("Summary", ("files",)),), ()))), "fields differ from this one's: Summary has"),
    (frame(pickle.dumps((((["unhashable"], ()),), ()))), "fields differ from this one's: its field list is malformed"),
    (frame(pickle.dumps((partials._names(), "x"))), "Summary expected as a tuple of 12, found str"),
    (frame(pickle.dumps((partials._names(), (1, 2)))), "Summary expected as a tuple of 12, found tuple of 2"),
], ids=["empty", "magic-only", "magic", "garbage", "version-0", "version-next", "version-255", "header-only",
        "half", "last-byte", "trailing", "zlib-garbage", "declared-short", "declared-long", "declared-huge",
        "not-pickle", "pickle-cut", "pickle-trailing", "not-pair", "other-fields", "odd-fields", "not-summary",
        "short-summary"])
def test_what_is_not_a_partial_is_refused(data, reason):
    with pytest.raises(CorruptPartial, match=reason):
        decode(data)


def zeros(mib: int) -> bytes:
    """A valid zlib stream of ``mib`` MiB of zeros in ~1 KB per MiB, made in milliseconds: one compressed MiB
    repeated (a full flush makes each block stand alone), then an empty final block and the Adler-32 of the
    zeros (a = 1, b = their count)."""
    compressor = zlib.compressobj(9)
    first = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    count = mib << 20
    return first + block * (mib - 1) + b"\x03\x00" + ((count % 65521) << 16 | 1).to_bytes(4, "big")


def bomb(declared: int, payload_prefix: bytes, mib: int) -> bytes:
    """A partial's header declaring ``declared`` bytes, then one zlib stream of ``payload_prefix`` and ``mib`` MiB
    of zeros (the prefix compressed in a block of its own before them)."""
    compressor = zlib.compressobj(9)
    head = compressor.compress(payload_prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = zeros(mib)[2:-4]  # without its zlib header and checksum: they are the whole stream's
    checksum = zlib.adler32(payload_prefix)  # then zeros: a stays, b grows by a for each
    a, b = checksum & 0xFFFF, checksum >> 16
    checksum = ((b + (mib << 20) * a) % 65521) << 16 | a
    return MAGIC + bytes([VERSION]) + declared.to_bytes(8, "little") + head + body + checksum.to_bytes(4, "big")


def test_the_zeros_helper_makes_a_valid_stream():
    for mib in (1, 3):
        assert zlib.decompress(zeros(mib)) == bytes(mib << 20)
    prefixed = bomb(0, b"\x80\x05", 2)[HEADER_BYTES:]
    assert zlib.decompress(prefixed) == b"\x80\x05" + bytes(2 << 20)


def test_a_payload_declared_over_the_bound_is_refused_before_it_inflates():
    two_gib = bomb(2 << 30, b"", 2048)  # honest: it declares the 2 GiB it expands to, in ~2 MB
    assert len(two_gib) < 3_000_000
    with pytest.raises(partials.PartialTooLarge, match=r"declares a 2147483648-byte payload, over the limit of "
                                                       r"268435456 bytes \(PARTIAL_MAX_BYTES\)") as refused:
        decode(two_gib)  # the default bound: 256 MiB
    assert refused.value.details == {"size": 2 << 30, "max_bytes": partials.MAX_PAYLOAD_BYTES}
    assert isinstance(refused.value, CorruptPartial)  # what the merge already records as a lost partial
    real = encode(read("full", KEY, MANY))
    declared = int.from_bytes(real[5:HEADER_BYTES], "little")
    with pytest.raises(partials.PartialTooLarge, match="over the limit"):
        decode(real, max_bytes=declared - 1)
    assert decode(real, max_bytes=declared).to_dict() == decode(real).to_dict()


def test_a_payload_that_inflates_past_its_declared_size_stops_there():
    with pytest.raises(CorruptPartial, match="not a valid pickle"):  # zeros are no pickle: refused at once
        decode(bomb(100, b"", 2048))
    # A pickle whose bytes object claims 2 GiB, in a payload that declares 1 MiB: read up to the declared end.
    claim = b"\x80\x05\x8e" + (2 << 30).to_bytes(8, "little")
    with pytest.raises(CorruptPartial, match="longer than the 1048576 bytes its header declares"):
        decode(bomb(1 << 20, claim, 2048))


def test_hostile_pickles_cost_the_time_of_their_bytes_not_more():
    """Opcodes outside a frame are read from what the inflater lends (peek), not with a call per byte; a text
    line (encode writes none) may not run on."""
    for opcode, refusal in ((b"N", "NoneType at the top, not a pair"), (b"(", r"not a valid pickle \(UnpicklingError")):
        started = time.monotonic()
        with pytest.raises(CorruptPartial, match=refusal):
            decode(frame(b"\x80\x05" + opcode * (4 << 20) + b"."))  # 4 Mi opcodes, no frame
        assert time.monotonic() - started < 3  # measured: 0.07-0.4 s; 16 s with a read(1) per opcode
    with pytest.raises(CorruptPartial, match="a text line longer than 65536 bytes"):
        decode(frame(b"\x80\x05I" + b"1" * (1 << 20) + b"\n."))


BOUNDED = """
import resource, sys, time
sys.path.insert(0, {repo!r})
from tests.unit.test_partials import bomb
from worker.partials import CorruptPartial, decode

cases = {{
    "declares 2 GiB": bomb(2 << 30, b"", 2048),
    "declares 200 MiB, inflates to 2 GiB": bomb(200 << 20, b"", 2048),
    "a 2 GiB bytes object declared in 16 MiB": bomb(16 << 20, b"\\x80\\x05\\x8e" + (2 << 30).to_bytes(8, "little"),
                                                    2048),
}}
for name, data in cases.items():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        decode(data, max_bytes=256 << 20)
        print(name, "DECODED")
    except CorruptPartial as e:
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
        print(f"{{name}}|{{grew}}|{{time.monotonic() - started:.2f}}|{{e.message}}")
"""


def test_bombs_are_refused_quickly_in_bounded_memory():
    """Peak memory of a fresh process (ru_maxrss, a high-water mark: each case runs after the ones that grew it
    less) while it refuses each bomb: none inflates more than what its header declares, and none past the
    bound at all."""
    run = subprocess.run([sys.executable, "-c", BOUNDED.format(repo=str(REPO))], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = {}
    for line in run.stdout.splitlines():
        name, grew, seconds, message = line.split("|")
        seen[name] = (int(grew), float(seconds), message)
    assert set(seen) == {"declares 2 GiB", "declares 200 MiB, inflates to 2 GiB",
                         "a 2 GiB bytes object declared in 16 MiB"}, run.stdout
    for name, (grew_mib, seconds, message) in seen.items():
        assert seconds < 5, (name, seconds)
        assert grew_mib < 64, (name, grew_mib, message)  # measured: 0, 0 and 10-26 MiB (the 16 MiB declared)


def tampered(change) -> bytes:
    """A valid partial whose plain-value tree ``change`` edits (the column named "SECRET-…" holds the data)."""
    table = pa.table({"SECRET-column": [1, 2, 3], "s": ["x", "y", None]})
    data = parquet(table)
    names, tree = payload_of(encode(profile_object("t/a.parquet", len(data), Ranged(data))))
    tree = list(tree)
    change(tree)
    return frame(pickle.dumps((names, tuple(tree))))


def stats_entry(tree, name, index, value):
    entry = list(tree[5][name])
    entry[index] = value
    tree[5][name] = tuple(entry)


def profile_entry(tree, name, index, value):
    entry = list(tree[11][name])
    entry[index] = value
    tree[11][name] = tuple(entry)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda t: t.__setitem__(1, 2.0), r"Summary.rows: int expected, found float"),
    (lambda t: t.__setitem__(1, True), r"Summary.rows: int expected, found bool"),
    (lambda t: t.__setitem__(4, [("a", 1)]), r"Summary.fields: dict expected, found list"),
    (lambda t: t.__setitem__(4, {1: ((), 1, 0)}), r"Summary.fields: entry 0: str expected, found int"),
    (lambda t: t.__setitem__(6, frozenset({"year"})), r"Summary.partition_columns: tuple expected, found frozenset"),
    (lambda t: t.__setitem__(7, (("k", 1),)), r"Summary.skipped: str expected, found int"),
    (lambda t: stats_entry(t, "SECRET-column", 4, ["SECRET-value"]),
     r"Summary.stats: entry 0: ColumnStats.min: a comparable value expected, found list"),
    (lambda t: stats_entry(t, "SECRET-column", 4, ("decimal", "SECRET")),
     r"ColumnStats.min: a Decimal whose text does not parse"),
    (lambda t: stats_entry(t, "SECRET-column", 4, ("decimal", "1.50E+1")), r"a Decimal whose text is not the one"),
    (lambda t: stats_entry(t, "SECRET-column", 6, ("number", "int64", "")),
     r"ColumnStats.vtype: ValueType expected as a tuple of 4, found tuple of 3"),
    (lambda t: profile_entry(t, "SECRET-column", 13, b"SECRET not a sketch"),
     r"Summary.profiles: entry 0: ColumnProfile: its state does not load"),
    (lambda t: profile_entry(t, "SECRET-column", 14, "SECRET"), r"ColumnProfile.kll: bytes expected, found str"),
    (lambda t: profile_entry(t, "SECRET-column", 10, 1), r"ColumnProfile.mean: float expected, found int"),
])
def test_values_of_the_wrong_shape_are_refused_without_showing_them(change, reason):
    with pytest.raises(CorruptPartial, match=reason) as refused:
        decode(tampered(change))
    assert "SECRET" not in str(refused.value) and "SECRET" not in str(refused.value.to_dict())


def test_an_untouched_tree_decodes():  # the tampering helper itself changes nothing
    assert decode(tampered(lambda tree: None)).to_dict()["columns"] == 2


def test_what_a_partial_cannot_hold_is_refused_when_encoding():
    class FakeProfile:
        def to_dict(self):
            return {}

    with pytest.raises(TypeError, match=r"takes a worker.summary.Summary"):
        encode(read("metadata", KEY, MANY).to_dict())
    with pytest.raises(TypeError, match=r"Summary.profiles: entry 0: ColumnProfile expected, found FakeProfile"):
        encode(Summary(profiles={"x": FakeProfile()}))
    odd = ColumnStats(types=frozenset(["int64"]), position=0, null_count=0, has_min_max=True,
                      min=dt.date(2024, 1, 1), max=None, vtype=ValueType("date", "date"))
    with pytest.raises(TypeError, match=r"ColumnStats.min: a comparable value expected .* found date"):
        encode(Summary(stats={"d": odd}))
    # numpy scalars are written as the Python values they equal
    numpy = ColumnStats(types=frozenset(["int64"]), position=np.int64(2), null_count=np.int64(0), has_min_max=True,
                        min=np.float64(1.5), max=np.float64(2.5), vtype=ValueType("number", "double"))
    back = decode(encode(Summary(stats={"n": numpy}, fields={"n": FieldInfo(frozenset(["double"]), 1, 2)})))
    assert type(back.stats["n"].min) is float and type(back.stats["n"].position) is int
    assert back.to_dict() == Summary(stats={"n": numpy}, fields={"n": FieldInfo(frozenset(["double"]), 1, 2)}).to_dict()


def test_the_codec_knows_every_field_of_every_record():
    for record in partials.RECORDS:
        assert {f.name for f in dataclasses.fields(record.cls)} == set(record.names), record.name


BLOCKED_IMPORTS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"numpy", "datasketches", "boto3", "botocore", "google", "flask",
                                  "functions_framework"}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from decimal import Decimal
from worker.partials import decode, encode
from worker.summary import ColumnStats, FieldInfo, Summary
from worker.values import ValueType
stats = ColumnStats(types=frozenset(["decimal(38,4)"]), position=0, null_count=1, has_min_max=True,
                    min=Decimal("-1.2500"), max=Decimal("99.0000"), vtype=ValueType("number", "decimal(38,4)"))
summary = Summary(files=1, rows=3, fields={"d": FieldInfo(frozenset(["decimal128(38, 4)"]), 1, 0)}, stats={"d": stats})
assert decode(encode(summary)).to_dict() == summary.to_dict()
assert "worker.profile" not in sys.modules and "numpy" not in sys.modules
"""


def test_metadata_partials_need_neither_numpy_nor_datasketches():
    run = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
