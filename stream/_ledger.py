"""Kafka's record of each shard's last checkpoint: the state that refuses a rollback.

After each checkpoint the worker commits its partition's offset to the consumer group
(`Checkpointing._commit`). The commit's metadata carries, signed with the active snapshot
key, each of the partition's shards' last checkpoint version and next offset::

    {"v": 1, "kid": "k2", "s": {"model": [version, next_offset], ...}, "mac": "hex"}

The HMAC covers the group, topic and partition too, so that a record cannot be moved to
another partition. A worker that claims the partition reads the record back
(`KafkaLedger.floors`) and refuses a checkpoint older than it: an attacker who can write
to Redis but not to the group's offsets cannot rewind it. README ("Security") says what
remains open.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence

from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from livelearn.learners import Keyring

__all__ = ["Floors", "KafkaLedger", "LedgerCodec"]

log = logging.getLogger("livelearn.worker")

# Each model's (version, next offset) at its last checkpoint written on this partition.
Floors = dict[str, tuple[int, int]]

# Kafka refuses a commit whose metadata is longer than the broker's
# offset.metadata.max.bytes (4096 by default); a record is cut to fit well inside it.
_MAX_RECORD = 3_500


class LedgerCodec:
    """Signs and verifies the records of one consumer group with ``keyring``.

    Examples
    --------
    >>> ring = Keyring({"k1": b"0123456789abcdef"}, "k1")
    >>> codec = LedgerCodec(ring, "group")
    >>> tp = TopicPartition("t", 0)
    >>> codec.read(tp, codec.record(tp, {"m": (3, 120)}))
    {'m': (3, 120)}
    >>> codec.read(TopicPartition("t", 1), codec.record(tp, {"m": (3, 120)}))
    {}

    """

    def __init__(self, keyring: Keyring, group: str) -> None:
        self._keys = keyring
        self._group = group

    def _signed(self, tp: TopicPartition, kid: str, shards: Mapping[str, list[int]]) -> bytes:
        body = {"g": self._group, "t": tp.topic, "p": tp.partition, "kid": kid, "s": shards}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def record(self, tp: TopicPartition, floors: Mapping[str, tuple[int, int]]) -> str:
        """The signed record of ``floors`` for ``tp``, cut to the newest shards that fit."""
        shards = {m: [v, o] for m, (v, o) in sorted(floors.items(), key=lambda i: -i[1][0])}
        while True:
            kid, mac = self._keys.sign(self._signed(tp, self._keys.active, shards))
            text = json.dumps({"v": 1, "kid": kid, "s": shards, "mac": mac}, separators=(",", ":"))
            if len(text) <= _MAX_RECORD or not shards:
                return text
            shards.pop(next(reversed(shards)))

    def read(self, tp: TopicPartition, metadata: str | None) -> Floors:
        """The floors of a record; empty for no record, or one that does not verify (logged)."""
        # confluent-kafka commits the metadata with its C string's terminating NUL.
        metadata = (metadata or "").rstrip("\x00")
        if not metadata:
            return {}
        try:
            raw = json.loads(metadata)
            kid, shards, mac = raw["kid"], raw["s"], raw["mac"]
            ok = self._keys.verify(kid, self._signed(tp, kid, shards), mac)
            floors = {str(m): (int(v), int(o)) for m, (v, o) in shards.items()} if ok else None
        except (ValueError, KeyError, TypeError):
            floors = None
        if floors is None:
            log.warning(
                "Kafka's committed record of %s/%s does not verify (another key, or edited): "
                "ignored; the next commit writes it again",
                tp.topic,
                tp.partition,
            )
            return {}
        return floors


class KafkaLedger:
    """Reads the group's committed records of partitions, with a Kafka admin client made at
    the first read (``fetch`` replaces it in tests)."""

    def __init__(
        self,
        codec: LedgerCodec,
        group: str,
        admin_config: Mapping[str, object],
        fetch: Callable[[Sequence[TopicPartition]], Mapping[TopicPartition, OffsetAndMetadata]]
        | None = None,
    ) -> None:
        self.codec = codec
        self._group = group
        self._config = dict(admin_config)
        self._fetch = fetch
        self._admin: KafkaAdminClient | None = None

    def floors(self, tp: TopicPartition) -> Floors:
        """The verified record of ``tp``'s shards; empty when there is none.

        Raises
        ------
        kafka.errors.KafkaError
            Kafka does not answer (the claim is retried).

        """
        if self._fetch is not None:
            found = self._fetch([tp])
        else:
            if self._admin is None:
                self._admin = KafkaAdminClient(**self._config)
            try:
                answer = self._admin.list_group_offsets({self._group: [tp]})
            except KafkaError:
                # The next try starts afresh: this client may hold on to a coordinator
                # that is gone (a broker that died), and would ask it again and again.
                self.close()
                raise
            found = answer.get(self._group, {})
        committed = found.get(tp)
        return self.codec.read(tp, None if committed is None else committed.metadata)

    def close(self) -> None:
        """Close the admin client, if one was made."""
        if self._admin is not None:
            try:
                self._admin.close()
            except KafkaError as exc:  # closing: nothing left to do with it
                log.debug("ledger admin client close: %s", exc)
            self._admin = None
