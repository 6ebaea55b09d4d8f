"""The checkpoint store: shard snapshots with the offsets they cover, in Redis.

One hash per (model, topic, partition) holds the signed snapshot, the next
offset to read, the owner's epoch, the counts and metrics, the version, the key
id that signed it, the time and the size. A write runs as one Lua script that
first checks the writer's fencing epoch, so a zombie worker cannot overwrite the
new owner's state, and that its version is above the stored one (the writer
signs the version into the snapshot, `Checkpoint.binding`), and then announces
the new version on the model's channel.

The hash's fields are not trusted: a reader compares them with the binding signed in the
snapshot (`learners/snapshot.py`) and refuses any difference.

Keys (`store._keys`) carry the model's hash tag, so that on Redis Cluster a shard's epoch,
hash and index, and the model's update channel, are in one slot and the script stays
atomic. The global set of model names cannot be: it is added to after the script, by an
idempotent SADD that every claim finding a checkpoint and the first save of a model in a
process repeat, so that a crash between the two never hides a model for good. On a
cluster the update is announced with SPUBLISH (sharded pub/sub), on a single server with
PUBLISH.

Durability: with ``wait_replicas`` above 0, each write is followed on its connection by
``WAIT wait_replicas wait_timeout_ms``; fewer acknowledgements raise ``NotReplicated``
(the write stands), so that the worker holds Kafka's offsets behind it. The default
(None) waits for one replica on a cluster or a server that has replicas, and for none on
a lone server.

A deployment from before hash tags is migrated by ``migrate`` (every shard and release;
run by a store's first claim, so by each worker once Redis answers, and by the command
line) and shard by shard on each claim: atomic per shard, idempotent, and safe with two
workers racing (an epoch never goes down; the higher version wins).

An epoch is never handed out twice, even by a Redis that lost its data: a claim takes the
stored epoch plus one, or Redis' clock in microseconds when that is larger. So a write
refused with an epoch *above* the writer's means another worker claimed the shard since,
and one refused with no epoch, or a smaller one, means Redis lost the writer's claim
(a restart without persistence, or from an older snapshot), which ``reclaim`` takes back.

``delete_model`` removes a model's checkpoints, timeline and index entries and bumps its
epochs (``livelearn models reset``); releases (``store/releases.py``) live under other keys
of the same model.

The methods a worker calls (``claim``, ``reclaim``, ``save``, ``epochs``, ``ping``) raise
``ServiceUnavailable`` when Redis does not answer or cannot take writes, so that the
worker can ride the outage out; the others raise redis-py's errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis import exceptions as redis_errors
from redis.cluster import RedisCluster

from livelearn.errors import NotReplicated, ServiceUnavailable, StaleEpochError, VersionConflict
from livelearn.learners.snapshot import Binding, SnapshotCodec, stats_digest
from livelearn.store import _migrate
from livelearn.store._client import (
    Client,
    address,
    get_many,
    is_cluster,
    keys_matching,
    node_client,
)
from livelearn.store._keys import Keys
from livelearn.store.timeline import (
    TIMELINE_ENTRIES,
    TimelineRead,
    decode_entry,
    timeline_entry,
)

log = logging.getLogger("livelearn.store")


@dataclass(frozen=True, order=True)
class ShardId:
    """One model's state for one topic-partition."""

    model: str
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.model}/{self.topic}/{self.partition}"


@dataclass(frozen=True)
class Checkpoint:
    """What the store holds for a shard; ``blob`` is the signed snapshot."""

    shard: ShardId
    blob: bytes
    next_offset: int
    epoch: int
    stats: dict[str, Any]
    updated_at: float
    size: int
    version: int
    kid: str = ""  # the key id that signed the blob, as the store says (shown, not trusted)

    def binding(self) -> Binding:
        """What the snapshot must be signed as, by what the store says of it."""
        return Binding(
            self.shard.model,
            self.shard.topic,
            self.shard.partition,
            self.next_offset,
            self.epoch,
            self.version,
            stats_digest(self.stats),
        )


class CheckpointStore(Protocol):
    """Where shards are checkpointed; the worker needs only this."""

    def claim(self, shard: ShardId) -> tuple[int, Checkpoint | None]:
        """Take ownership: bump the shard's epoch; return it with the last checkpoint."""
        ...

    def save(
        self,
        shard: ShardId,
        epoch: int,
        blob: bytes,
        next_offset: int,
        stats: dict[str, Any],
        version: int,
        kid: str = "",
        *,
        event_ms: int | None = None,
        since: int = -1,
    ) -> int:
        """Write a checkpoint if ``epoch`` is still current and ``version`` (signed in the
        blob) is above the stored one, with its timeline entry; return ``version``."""
        ...

    def load(self, shard: ShardId) -> Checkpoint | None:
        """The shard's last checkpoint, if any."""
        ...

    def reclaim(self, shard: ShardId, seen: int | None) -> int | None:
        """Take the shard back after the store lost this worker's claim: bump its epoch only
        if it is still ``seen``; the new epoch, or None when someone claimed it meanwhile."""
        ...

    def epochs(self, shards: Sequence[ShardId]) -> list[int | None]:
        """The shards' current epochs (None where there is none); answers or raises even
        for no shard, so it doubles as a health check."""
        ...


# Bumps the epoch in KEYS[1] to the larger of (stored + 1) and Redis' clock in microseconds,
# so that an epoch is never handed out twice, even after Redis lost the key.
_BUMP_LUA = """
local epoch = redis.call('INCR', KEYS[1])
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
if epoch < floor then
  redis.call('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])))
  epoch = floor
end
"""

_CLAIM_LUA = _BUMP_LUA + "return epoch\n"

# ARGV[1]: the epoch the caller last saw ('' for none)
_RECLAIM_LUA = (
    """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then
  return {-1, current or ''}
end
"""
    + _BUMP_LUA
    + "return {epoch, ''}\n"
)


# KEYS: epoch, shard hash, model shard set, model timeline (one slot: the model's hash tag)
# ARGV: epoch, blob, next_offset, stats, updated_at, member, publish command, channel,
#       message prefix, version, kid, timeline cap, timeline entry
_SAVE_LUA = """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[1] then
  return {-1, current or ''}
end
local stored = tonumber(redis.call('HGET', KEYS[2], 'version') or '0') or 0
local version = tonumber(ARGV[10])
if version <= stored then
  return {-2, tostring(stored)}
end
redis.call('HSET', KEYS[2], 'blob', ARGV[2], 'next_offset', ARGV[3], 'epoch', ARGV[1],
           'stats', ARGV[4], 'updated_at', ARGV[5], 'size', string.len(ARGV[2]),
           'version', ARGV[10], 'kid', ARGV[11])
redis.call('SADD', KEYS[3], ARGV[6])
-- the timeline (store/timeline.py): appended with the checkpoint, never without it
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[12], '*', 'e', ARGV[13])
redis.call(ARGV[7], ARGV[8], ARGV[9] .. ',"version":' .. version .. '}')
return {version, current}
"""


class RedisCheckpointStore:
    """``CheckpointStore`` over a real Redis server or Redis Cluster.

    Parameters
    ----------
    client
        A ``redis.Redis`` or a ``redis.cluster.RedisCluster`` (`store.connection`).
    prefix
        The keys' prefix (``redis.key_prefix``).
    wait_replicas
        Replicas each write waits for (``WAIT``); None: one on a cluster or on a server
        with replicas, none on a lone server, decided at the first write.
    wait_timeout_ms
        How long a write waits for them before ``NotReplicated``.
    timeline_entries
        Entries each model's timeline keeps (``redis.timeline_entries``).
    """

    def __init__(
        self,
        client: Client,
        prefix: str = "livelearn",
        *,
        wait_replicas: int | None = None,
        wait_timeout_ms: int = 1000,
        timeline_entries: int = TIMELINE_ENTRIES,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._timeline_entries = timeline_entries
        self.keys = Keys(prefix)
        self._cluster = is_cluster(client)
        self._publish = "SPUBLISH" if self._cluster else "PUBLISH"
        self._save = client.register_script(_SAVE_LUA)
        self._claim = client.register_script(_CLAIM_LUA)
        self._reclaim = client.register_script(_RECLAIM_LUA)
        self._where = address(client)
        self._wait = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._listed: set[str] = set()  # models this store added to the set of names
        self._migrated = False  # whether this store moved the old layout's keys

    @property
    def client(self) -> Client:
        """The Redis client the store uses."""
        return self._r

    @property
    def cluster(self) -> bool:
        """Whether the store is on Redis Cluster."""
        return self._cluster

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Turn Redis not answering (or refusing writes for now, or a cluster between
        masters) into ServiceUnavailable."""
        try:
            yield
        except (redis.RedisError, redis_errors.RedisClusterException) as exc:
            if not _is_outage(exc):
                raise
            if isinstance(self._r, RedisCluster):
                with contextlib.suppress(redis.RedisError, redis_errors.RedisClusterException):
                    self._r.nodes_manager.initialize()  # a failover: learn the new masters
            raise ServiceUnavailable(f"Redis at {self._where} does not answer: {exc}") from exc

    def _shard_key(self, shard: ShardId) -> str:
        return self.keys.shard(shard.model, shard.topic, shard.partition)

    def _epoch_key(self, shard: ShardId) -> str:
        return self.keys.epoch(shard.model, shard.topic, shard.partition)

    def _timeline_key(self, model: str) -> str:
        return self.keys.timeline(model)

    def channel(self, model: str) -> str:
        """The channel announcing the model's new checkpoints (sharded on a cluster)."""
        return self.keys.channel(model)

    def migrate(self) -> int:
        """Move every shard and release from the layout before hash tags (a single server's)
        to the tagged one; the number of keys moved. Idempotent; nothing to do on a cluster.
        """
        if self._cluster:
            return 0
        with self._answering():
            moved = _migrate.migrate_all(self._r, self._prefix)  # type: ignore[arg-type]
        self._migrated = True
        return moved

    def claim(self, shard: ShardId) -> tuple[int, Checkpoint | None]:
        """Take ownership: bump the shard's epoch; return it with the last checkpoint."""
        with self._answering():
            if not self._cluster:
                if not self._migrated:  # the worker's first claim: everything, once
                    _migrate.migrate_all(self._r, self._prefix)  # type: ignore[arg-type]
                    self._migrated = True
                _migrate.migrate_shard(self._r, self._prefix, shard)  # type: ignore[arg-type]
            epoch = int(self._claim(keys=[self._epoch_key(shard)]))
            checkpoint = self.load(shard)
            if checkpoint is not None:
                self._list(shard.model, again=True)
            return epoch, checkpoint

    def _list(self, model: str, again: bool = False) -> None:
        """Add ``model`` to the set of names (idempotent), once per process unless ``again``."""
        if again or model not in self._listed:
            self._r.sadd(self.keys.models(), model)
            self._listed.add(model)

    def reclaim(self, shard: ShardId, seen: int | None) -> int | None:
        """Take the shard back after the store lost this worker's claim: bump its epoch only
        if it is still ``seen``; the new epoch, or None when someone claimed it meanwhile."""
        with self._answering():
            result = self._reclaim(
                keys=[self._epoch_key(shard)], args=["" if seen is None else str(seen)]
            )
        epoch = int(result[0])
        return None if epoch < 0 else epoch

    def epochs(self, shards: Sequence[ShardId]) -> list[int | None]:
        """The shards' current epochs (None where there is none), in one round trip per
        slot; a ping when there is no shard."""
        with self._answering():
            if not shards:
                self._r.ping()
                return []
            raw = get_many(self._r, [self._epoch_key(s) for s in shards])
        return [None if v is None else int(v) for v in raw]

    def ping(self) -> bool:
        """True when Redis answers."""
        with self._answering():
            return bool(self._r.ping())

    def current_epoch(self, shard: ShardId) -> int | None:
        """The epoch of the shard's present owner."""
        raw = self._r.get(self._epoch_key(shard))
        return None if raw is None else int(raw)

    def wait_replicas(self) -> int:
        """How many replicas each write waits for (deciding the default on first use)."""
        if self._wait is None:
            if self._cluster:
                self._wait = 1
            else:
                info: dict[str, Any] = self._r.info("replication")
                self._wait = 1 if int(info.get("connected_slaves", 0)) > 0 else 0
        return self._wait

    def save(
        self,
        shard: ShardId,
        epoch: int,
        blob: bytes,
        next_offset: int,
        stats: dict[str, Any],
        version: int,
        kid: str = "",
        *,
        event_ms: int | None = None,
        since: int = -1,
    ) -> int:
        """Write a checkpoint if ``epoch`` is still current and ``version`` is above the
        stored one; return ``version``. ``blob`` is signed with that version, ``stats`` and
        ``next_offset`` bound in it (`Checkpoint.binding`).

        The same script appends the checkpoint's entry to the model's timeline
        (`store.timeline`): ``event_ms`` is the event time of the last event it covers,
        ``since`` the next offset of the checkpoint its state built on (-1 for none), from
        which its drift detections and alarms are new.

        Raises
        ------
        StaleEpochError
            When the store holds another epoch (``current``): a later claim, or none at
            all if Redis lost it.
        VersionConflict
            When the store holds this version or a later one (``stored``): nothing written.
        NotReplicated
            When the checkpoint was written but fewer replicas than ``wait_replicas``
            acknowledged it in time.
        ServiceUnavailable
            When Redis does not answer; nothing was written, or it is unknown whether it was.
        """
        message = json.dumps(
            {"topic": shard.topic, "partition": shard.partition, "next_offset": next_offset}
        )[:-1]
        keys = [
            self._epoch_key(shard),
            self._shard_key(shard),
            self.keys.shards(shard.model),
            self._timeline_key(shard.model),
        ]
        args: list[bytes | str | int] = [
            str(epoch),
            blob,
            next_offset,
            json.dumps(stats, separators=(",", ":")),
            repr(time.time()),
            f"{shard.topic}/{shard.partition}",
            self._publish,
            self.channel(shard.model),
            message,
            str(version),
            kid,
            str(self._timeline_entries),
            timeline_entry(
                shard.topic, shard.partition, next_offset, version, stats, event_ms, since
            ),
        ]
        acked = None
        with self._answering():
            wanted = self.wait_replicas()
            if wanted:
                result, acked = self._save_and_wait(keys, args, wanted)
            else:
                result = self._save(keys=keys, args=args)
        written, current = int(result[0]), result[1]
        if written == -2:
            raise VersionConflict(str(shard), version, int(current))
        if written < 0:
            raise StaleEpochError(str(shard), epoch, int(current) if current else None)
        try:
            self._list(shard.model)
        except (redis.RedisError, redis_errors.RedisClusterException) as exc:
            # The checkpoint stands; the name is added by the next save or claim.
            log.warning("model %s not yet in %s: %s", shard.model, self.keys.models(), exc)
        if acked is not None and int(acked) < wanted:
            raise NotReplicated(str(shard), written, int(acked), wanted, self._wait_timeout_ms)
        return written

    def _save_and_wait(
        self, keys: list[str], args: list[bytes | str | int], wanted: int
    ) -> tuple[Any, Any]:
        """Run the save script and ``WAIT`` in one round trip on one connection (WAIT counts
        the writes of its own connection), to the master of the shard's slot; the script's
        answer and how many replicas acknowledged it."""
        node = node_client(self._r, keys[0])
        for _ in range(2):
            pipe = node.pipeline(transaction=False)
            pipe.evalsha(self._save.sha, len(keys), *keys, *args)
            pipe.execute_command("WAIT", wanted, self._wait_timeout_ms)  # type: ignore[no-untyped-call]
            try:
                result, acked = pipe.execute()
            except redis_errors.NoScriptError:  # a new master: nothing ran; load it, again
                node.script_load(_SAVE_LUA)
                continue
            return result, acked
        raise redis_errors.NoScriptError(f"the save script vanished from {address(node)} twice")

    def write(
        self,
        codec: SnapshotCodec,
        shard: ShardId,
        epoch: int,
        obj: object,
        next_offset: int,
        stats: dict[str, Any],
        spec: str | None = None,
    ) -> int:
        """Sign ``obj`` as the shard's next version, bound to the checkpoint, and save it
        (for tools, benches and tests; the worker tracks its versions itself). Returns the
        version; raises as `save` does."""
        raw, stored_offset = self._r.hmget(self._shard_key(shard), ["version", "next_offset"])
        version = int(raw or 0) + 1
        binding = Binding(
            shard.model,
            shard.topic,
            shard.partition,
            next_offset,
            epoch,
            version,
            stats_digest(stats),
        )
        blob = codec.encode(obj, binding, spec)
        return self.save(
            shard,
            epoch,
            blob,
            next_offset,
            stats,
            version,
            codec.keys.active,
            since=int(stored_offset or -1),
        )

    def load(self, shard: ShardId) -> Checkpoint | None:
        """The shard's last checkpoint, if any."""
        raw: dict[bytes, bytes] = self._r.hgetall(self._shard_key(shard))  # type: ignore[assignment]
        if not raw:
            return None
        return Checkpoint(
            shard=shard,
            blob=raw[b"blob"],
            next_offset=int(raw[b"next_offset"]),
            epoch=int(raw[b"epoch"]),
            stats=json.loads(raw[b"stats"]),
            updated_at=float(raw[b"updated_at"]),
            size=int(raw[b"size"]),
            version=int(raw[b"version"]),
            kid=raw.get(b"kid", b"").decode(errors="replace"),
        )

    def describe(self, shard: ShardId) -> dict[str, Any] | None:
        """The shard's checkpoint without its blob (nothing is unpickled)."""
        fields = ["next_offset", "epoch", "stats", "updated_at", "size", "version", "kid"]
        values: list[bytes | None] = self._r.hmget(self._shard_key(shard), fields)  # type: ignore[assignment]
        if values[0] is None:
            return None
        row = dict(zip(fields, values, strict=True))
        return {
            "next_offset": int(row["next_offset"] or 0),
            "epoch": int(row["epoch"] or 0),
            "stats": json.loads(row["stats"] or b"{}"),
            "updated_at": float(row["updated_at"] or 0.0),
            "size": int(row["size"] or 0),
            "version": int(row["version"] or 0),
            "kid": (row["kid"] or b"").decode(errors="replace"),
        }

    def versions(self, shards: list[ShardId]) -> list[int | None]:
        """Each shard's checkpoint version (None where there is none), in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for shard in shards:
            pipe.hget(self._shard_key(shard), "version")
        return [None if v is None else int(v) for v in pipe.execute()]

    def stamps(self, shards: list[ShardId]) -> list[tuple[int, float] | None]:
        """Each shard's checkpoint (version, updated_at), None where there is none, in one
        round trip. The time tells a new checkpoint from an old one of the same version
        after Redis lost its data and versions started again at 1."""
        pipe = self._r.pipeline(transaction=False)
        for shard in shards:
            pipe.hmget(self._shard_key(shard), ["version", "updated_at"])
        return [
            None if version is None else (int(version), float(updated_at or 0.0))
            for version, updated_at in pipe.execute()
        ]

    def models(self) -> list[str]:
        """Names of the models that have checkpoints."""
        members: set[bytes] = self._r.smembers(self.keys.models())  # type: ignore[assignment]
        return sorted(m.decode() for m in members)

    def delete_model(self, model: str) -> list[ShardId]:
        """Delete every checkpoint of ``model`` and its index entries; return the shards
        whose checkpoint was deleted, in topic and partition order. Nothing is announced.

        The fencing epochs are bumped, not deleted: a worker that still owns a shard of the
        model has every later write refused, and a new owner's epoch never repeats an old one.
        The next claim starts the shard with no checkpoint. The model's keys share a slot,
        so this is one transaction on a cluster too; its name leaves the set of names after.
        """
        epoch_keys = keys_matching(self._r, f"{_glob_escape(self.keys.tag(model))}:epoch:*")
        shards = self.shards(model)
        pipe = self._r.pipeline(transaction=True)
        for key in epoch_keys:
            pipe.incr(key)
        for shard in shards:
            pipe.delete(self._shard_key(shard))
        pipe.delete(self.keys.shards(model))
        pipe.delete(self._timeline_key(model))
        deleted = pipe.execute()[len(epoch_keys) : len(epoch_keys) + len(shards)]
        self._r.srem(self.keys.models(), model)
        self._listed.discard(model)
        return [shard for shard, n in zip(shards, deleted, strict=True) if n]

    def timeline(self, model: str, after: str | None, count: int) -> TimelineRead:
        """The model's timeline entries after the entry id ``after`` (its newest ones when
        None), at most ``count``, oldest first, with the id of the oldest entry the stream
        holds, in one round trip. Its entries after ``after`` are read from the oldest: a
        caller that keeps up reads each entry once."""
        key = self._timeline_key(model)
        pipe = self._r.pipeline(transaction=False)
        if after is None:
            pipe.xrevrange(key, "+", "-", count=count)
        else:
            pipe.xrange(key, f"({after}", "+", count=count)
        pipe.xrange(key, "-", "+", count=1)
        rows, first = pipe.execute()
        if after is None:
            rows.reverse()
        entries = [decode_entry(_text(entry_id), fields[b"e"]) for entry_id, fields in rows]
        return TimelineRead(entries, _text(first[0][0]) if first else None)

    def shards(self, model: str) -> list[ShardId]:
        """The model's checkpointed shards, in topic and partition order."""
        members: set[bytes] = self._r.smembers(self.keys.shards(model))  # type: ignore[assignment]
        out = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            topic, _, partition = text.rpartition("/")
            out.append(ShardId(model, topic, int(partition)))
        return sorted(out)


def _is_outage(exc: Exception) -> bool:
    """Whether ``exc`` means Redis cannot serve now (down, unreachable, loading, read-only,
    out of memory, refusing writes after a failed save, or a cluster whose slot is moving
    or has no master yet), not a bug in the request."""
    if isinstance(
        exc,
        redis_errors.ConnectionError  # BusyLoadingError and AuthenticationError too
        | redis_errors.TimeoutError
        | redis_errors.ReadOnlyError
        | redis_errors.OutOfMemoryError
        | redis_errors.ClusterDownError  # MasterDownError too
        | redis_errors.ClusterError
        | redis_errors.AskError  # MovedError too: served by another master since a failover
        | redis_errors.TryAgainError
        | redis_errors.RedisClusterException,  # no node to ask, a slot not covered
    ):
        return True
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(
        ("MISCONF", "NOREPLICAS", "LOADING")
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _glob_escape(text: str) -> str:
    r"""Escape Redis glob characters so ``text`` matches only itself in a SCAN pattern.

    Examples
    --------
    >>> print(_glob_escape("live*learn[1]"))
    live\*learn\[1\]

    """
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
