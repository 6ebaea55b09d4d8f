"""Combining a model's shards into one prediction, and Kafka's key-to-partition mapping.

A model is sharded by topic-partition; serving answers with the mean of the shards'
class probabilities (or regression outputs) weighted by the events each shard learned,
or, for a model routed by key, with the shard of the key's partition as Kafka's default
partitioner assigns it. Everything here is pure: no I/O, no state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["combine_proba", "combine_values", "murmur2", "partition_for_key", "predicted_class"]

_MASK32 = 0xFFFFFFFF
# Constants of Kafka's Utils.murmur2 (org.apache.kafka.common.utils), itself MurmurHash2.
_SEED = 0x9747B28C
_M = 0x5BD1E995


def combine_proba(parts: Sequence[tuple[Mapping[Any, float], float]]) -> dict[Any, float]:
    """Return the mean of class probabilities weighted by each part's weight.

    Parameters
    ----------
    parts
        ``(proba, weight)`` pairs, one a shard; the weight is the events the shard learned.
        The classes are the union over the parts; a class a part lacks counts 0 there. A part
        with weight 0 (or less) or an empty ``proba`` is skipped.

    Returns
    -------
    dict
        Class to probability, in the order classes are first seen; ``{}`` when every part
        is skipped. With one part left its probabilities are returned unchanged.

    Examples
    --------
    >>> combine_proba([({True: 0.8, False: 0.2}, 3), ({True: 0.4, False: 0.6}, 1)])
    {True: 0.7000000000000001, False: 0.30000000000000004}
    >>> combine_proba([({"a": 1.0}, 1), ({"b": 1.0}, 1), ({"c": 1.0}, 0), ({}, 5)])
    {'a': 0.5, 'b': 0.5}
    >>> combine_proba([({"a": 1.0}, 0)])
    {}

    """
    used = [(proba, weight) for proba, weight in parts if weight > 0 and proba]
    if not used:
        return {}
    if len(used) == 1:
        return dict(used[0][0])
    total = 0.0
    sums: dict[Any, float] = {}
    for proba, weight in used:
        total += weight
        for label, p in proba.items():
            sums[label] = sums.get(label, 0.0) + p * weight
    return {label: s / total for label, s in sums.items()}


def combine_values(parts: Sequence[tuple[float | None, float]]) -> float | None:
    """Return the mean of regression outputs weighted by each part's weight.

    A part whose value is None or whose weight is 0 (or less) is skipped; None when every
    part is. With one part left its value is returned unchanged.

    Examples
    --------
    >>> combine_values([(1.0, 1), (4.0, 2)])
    3.0
    >>> combine_values([(None, 3), (2.5, 1), (7.0, 0)])
    2.5
    >>> combine_values([]) is None
    True

    """
    used = [(value, weight) for value, weight in parts if value is not None and weight > 0]
    if not used:
        return None
    if len(used) == 1:
        return used[0][0]
    total = sum(weight for _, weight in used)
    return sum(value * weight for value, weight in used) / total


def combine_metrics(
    parts: Sequence[tuple[Mapping[str, float | None], float]],
) -> dict[str, float | None]:
    """Return each metric's mean over the parts weighted by their weights (events learned).

    A metric is None where no part with weight has a value for it.

    Examples
    --------
    >>> combine_metrics([({"Accuracy": 0.5}, 1), ({"Accuracy": 1.0, "F1": None}, 3)])
    {'Accuracy': 0.875, 'F1': None}

    """
    names = dict.fromkeys(name for values, _ in parts for name in values)
    return {
        name: combine_values([(values.get(name), weight) for values, weight in parts])
        for name in names
    }


def _order_key(label: Any) -> tuple[str, Any]:
    return (type(label).__name__, label)


def predicted_class(proba: Mapping[Any, float]) -> Any:
    """Return the most probable class; on a tie, the first of the tied classes in sorted order.

    River's ``predict_one`` breaks ties by dict order instead, which depends on the order a
    shard saw the classes; sorting makes a combined answer independent of shard order.
    Classes of different types sort by type name first. None for an empty ``proba``.

    Examples
    --------
    >>> predicted_class({"b": 0.5, "a": 0.5})
    'a'
    >>> predicted_class({True: 0.5, False: 0.5})
    False
    >>> predicted_class({"x": 0.1, "y": 0.9}), predicted_class({}) is None
    ('y', True)

    """
    winner: Any = None
    best = -math.inf
    tie = False
    for label, p in proba.items():  # no allocation: this runs on every served prediction
        if p > best:
            winner, best, tie = label, p, False
        elif p == best:
            tie = True
    if not tie:
        return winner
    tied = [label for label, p in proba.items() if p == best]
    try:
        return min(tied)
    except TypeError:
        return min(tied, key=_order_key)


def murmur2(data: bytes) -> int:
    """Return Kafka's murmur2 hash of ``data`` as an unsigned 32-bit integer.

    The same as ``org.apache.kafka.common.utils.Utils.murmur2`` (which returns it as a signed
    Java int) and ``kafka.partitioner.default.murmur2``.

    Examples
    --------
    >>> murmur2(b"21") - (1 << 32)  # Kafka's UtilsTest: -973932308
    -973932308
    >>> murmur2(b"abc")
    479470107

    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    extra = length - whole
    if extra >= 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """Return the partition Kafka's default partitioner gives a record with ``key``.

    ``(murmur2(key) & 0x7fffffff) % partitions``, as the Java producer and kafka-python do
    for a keyed record.

    Examples
    --------
    >>> [partition_for_key(k, 1000) for k in (b"", b"a", b"abc", b"123456789")]
    [681, 524, 107, 566]

    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
