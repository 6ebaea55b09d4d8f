"""Combining shards into one prediction, and Kafka's murmur2 partitioner."""

from __future__ import annotations

import random

import pytest
from kafka.partitioner.default import murmur2 as kafka_murmur2

from livelearn.learners import (
    combine_proba,
    combine_values,
    murmur2,
    partition_for_key,
    predicted_class,
)

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints).
JAVA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

# kafka-python's test_partitioner: partitions the Java producer chose among 1000.
JAVA_PARTITIONS = [
    (b"", 681),
    (b"a", 524),
    (b"ab", 434),
    (b"abc", 107),
    (b"123456789", 566),
    (b"\x00 ", 742),
]


@pytest.mark.parametrize(("data", "expected"), JAVA_MURMUR2, ids=lambda v: repr(v)[:20])
def test_murmur2_matches_kafkas_java_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected & 0xFFFFFFFF


@pytest.mark.parametrize(("key", "partition"), JAVA_PARTITIONS, ids=repr)
def test_partition_for_key_matches_the_java_producer(key: bytes, partition: int) -> None:
    assert partition_for_key(key, 1000) == partition


def test_murmur2_matches_kafka_python_on_many_keys() -> None:
    rng = random.Random(7)
    keys = [rng.randbytes(rng.randrange(0, 40)) for _ in range(5000)]
    keys += [f"user-{i}".encode() for i in range(2000)]
    keys += ["clé-€-ß-日本".encode(), bytes(range(256))]
    for key in keys:
        assert murmur2(key) == kafka_murmur2(key), key
        for partitions in (1, 2, 3, 7, 12, 100):
            assert partition_for_key(key, partitions) == (kafka_murmur2(key) & 0x7FFFFFFF) % (
                partitions
            )


def test_partition_for_key_refuses_no_partitions() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        partition_for_key(b"k", 0)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([({True: 0.9, False: 0.1}, 10)], {True: 0.9, False: 0.1}),
        ([({True: 0.8, False: 0.2}, 1), ({True: 0.2, False: 0.8}, 1)], {True: 0.5, False: 0.5}),
        ([({"a": 0.6, "b": 0.4}, 3), ({"c": 1.0}, 1)], {"a": 0.45, "b": 0.3, "c": 0.25}),
        ([({"a": 1.0}, 0), ({"b": 1.0}, 2)], {"b": 1.0}),
        ([({}, 5), ({"a": 0.3, "b": 0.7}, 1)], {"a": 0.3, "b": 0.7}),
        ([({"a": 1.0}, 0), ({}, 4)], {}),
        ([], {}),
    ],
    ids=[
        "one",
        "equal-weights",
        "class-missing-counts-0",
        "zero-weight",
        "empty-proba",
        "all-skipped",
        "none",
    ],
)
def test_combine_proba(
    parts: list[tuple[dict[str, float], float]], expected: dict[str, float]
) -> None:
    got = combine_proba(parts)
    assert got.keys() == expected.keys()
    for label, p in expected.items():
        assert got[label] == pytest.approx(p, abs=1e-12)


def test_combine_proba_sums_to_one_and_leaves_inputs_alone() -> None:
    a, b = {"x": 0.25, "y": 0.75}, {"y": 0.5, "z": 0.5}
    got = combine_proba([(a, 7), (b, 3)])
    assert sum(got.values()) == pytest.approx(1.0, abs=1e-12)
    assert a == {"x": 0.25, "y": 0.75} and b == {"y": 0.5, "z": 0.5}
    single = combine_proba([(a, 1)])
    assert single == a and single is not a


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([(2.0, 1)], 2.0),
        ([(1.0, 1), (4.0, 2)], 3.0),
        ([(None, 5), (1.5, 1)], 1.5),
        ([(9.0, 0), (None, 1)], None),
    ],
    ids=["one", "weighted", "none-skipped", "all-skipped"],
)
def test_combine_values(parts: list[tuple[float | None, float]], expected: float | None) -> None:
    assert combine_values(parts) == expected


@pytest.mark.parametrize(
    ("proba", "expected"),
    [
        ({"b": 0.2, "a": 0.8}, "a"),
        ({"b": 0.5, "a": 0.5}, "a"),
        ({True: 0.5, False: 0.5}, False),
        ({2: 0.4, 1: 0.2, 0: 0.4}, 0),
        ({"x": 0.5, 1: 0.5}, 1),  # mixed types: by type name, "int" < "str"
        ({}, None),
    ],
    ids=["max", "tie-str", "tie-bool", "tie-int", "tie-mixed", "empty"],
)
def test_predicted_class_breaks_ties_by_sorted_order(
    proba: dict[object, float], expected: object
) -> None:
    assert predicted_class(proba) == expected
