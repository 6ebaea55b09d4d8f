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

Keys, under ``key_prefix`` (default ``livelearn``)::

    {prefix}:models                              set of model names
    {prefix}:model:{model}:shards                set of "topic/partition"
    {prefix}:shard:{model}:{topic}:{partition}   hash (blob, next_offset, epoch, …)
    {prefix}:epoch:{model}:{topic}:{partition}   fencing epoch (bumped on claim)
    {prefix}:updates:{model}                     pub/sub channel
    {prefix}:{{model}}:timeline                  stream, one entry per checkpoint, capped
                                                 (`store.timeline`); the model's name in
                                                 braces: a Redis Cluster hash tag

An epoch is never handed out twice, even by a Redis that lost its data: a claim takes the
stored epoch plus one, or Redis' clock in microseconds when that is larger. So a write
refused with an epoch *above* the writer's means another worker claimed the shard since,
and one refused with no epoch, or a smaller one, means Redis lost the writer's claim
(a restart without persistence, or from an older snapshot), which ``reclaim`` takes back.

``delete_model`` removes a model's checkpoints, timeline and index entries and bumps its
epochs (``livelearn models reset``); releases (``store/releases.py``) live under other keys.

The methods a worker calls (``claim``, ``reclaim``, ``save``, ``epochs``, ``ping``) raise
``ServiceUnavailable`` when Redis does not answer or cannot take writes, so that the
worker can ride the outage out; the others raise redis-py's errors.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from redis import exceptions as redis_errors

from livelearn.errors import ServiceUnavailable, StaleEpochError, VersionConflict
from livelearn.learners.snapshot import Binding, SnapshotCodec, stats_digest
from livelearn.store.timeline import (
    TIMELINE_ENTRIES,
    TimelineRead,
    decode_entry,
    timeline_entry,
)


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


# KEYS: epoch, shard hash, model shard set, model set, model timeline
# ARGV: epoch, blob, next_offset, stats, updated_at, member, model, channel, message prefix,
#       version, kid, timeline cap, timeline entry
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
redis.call('SADD', KEYS[4], ARGV[7])
-- the timeline (store/timeline.py): appended with the checkpoint, never without it
redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[12], '*', 'e', ARGV[13])
redis.call('PUBLISH', ARGV[8], ARGV[9] .. ',"version":' .. version .. '}')
return {version, current}
"""


class RedisCheckpointStore:
    """``CheckpointStore`` over a real Redis server."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "livelearn",
        timeline_entries: int = TIMELINE_ENTRIES,
    ) -> None:
        self._r = client
        self._prefix = prefix
        self._timeline_entries = timeline_entries
        self._save = client.register_script(_SAVE_LUA)
        self._claim = client.register_script(_CLAIM_LUA)
        self._reclaim = client.register_script(_RECLAIM_LUA)
        self._where = _address(client)

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        """Turn Redis not answering (or refusing writes for now) into ServiceUnavailable."""
        try:
            yield
        except redis.RedisError as exc:
            if not _is_outage(exc):
                raise
            raise ServiceUnavailable(f"Redis at {self._where} does not answer: {exc}") from exc

    def _shard_key(self, shard: ShardId) -> str:
        return f"{self._prefix}:shard:{shard.model}:{shard.topic}:{shard.partition}"

    def _epoch_key(self, shard: ShardId) -> str:
        return f"{self._prefix}:epoch:{shard.model}:{shard.topic}:{shard.partition}"

    def _timeline_key(self, model: str) -> str:
        # The braces are a Redis Cluster hash tag: a model's keys share one slot.
        return f"{self._prefix}:{{{model}}}:timeline"

    def channel(self, model: str) -> str:
        """The pub/sub channel announcing the model's new checkpoints."""
        return f"{self._prefix}:updates:{model}"

    def claim(self, shard: ShardId) -> tuple[int, Checkpoint | None]:
        """Take ownership: bump the shard's epoch; return it with the last checkpoint."""
        with self._answering():
            epoch = int(self._claim(keys=[self._epoch_key(shard)]))
            return epoch, self.load(shard)

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
        """The shards' current epochs (None where there is none), in one round trip; a
        ping when there is no shard."""
        with self._answering():
            if not shards:
                self._r.ping()
                return []
            raw: list[bytes | None] = self._r.mget([self._epoch_key(s) for s in shards])  # type: ignore[assignment]
        return [None if v is None else int(v) for v in raw]

    def ping(self) -> bool:
        """True when Redis answers."""
        with self._answering():
            return bool(self._r.ping())

    def current_epoch(self, shard: ShardId) -> int | None:
        """The epoch of the shard's present owner."""
        raw = self._r.get(self._epoch_key(shard))
        return None if raw is None else int(raw)

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
        ServiceUnavailable
            When Redis does not answer; nothing was written.
        """
        message = json.dumps(
            {"topic": shard.topic, "partition": shard.partition, "next_offset": next_offset}
        )[:-1]
        with self._answering():
            result = self._save(
                keys=[
                    self._epoch_key(shard),
                    self._shard_key(shard),
                    f"{self._prefix}:model:{shard.model}:shards",
                    f"{self._prefix}:models",
                    self._timeline_key(shard.model),
                ],
                args=[
                    str(epoch),
                    blob,
                    next_offset,
                    json.dumps(stats, separators=(",", ":")),
                    repr(time.time()),
                    f"{shard.topic}/{shard.partition}",
                    shard.model,
                    self.channel(shard.model),
                    message,
                    str(version),
                    kid,
                    str(self._timeline_entries),
                    timeline_entry(
                        shard.topic, shard.partition, next_offset, version, stats, event_ms, since
                    ),
                ],
            )
        written, current = int(result[0]), result[1]
        if written == -2:
            raise VersionConflict(str(shard), version, int(current))
        if written < 0:
            raise StaleEpochError(str(shard), epoch, int(current) if current else None)
        return written

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
        return sorted(m.decode() for m in self._r.smembers(f"{self._prefix}:models"))  # type: ignore[union-attr]

    def delete_model(self, model: str) -> list[ShardId]:
        """Delete every checkpoint of ``model`` and its index entries; return the shards
        whose checkpoint was deleted, in topic and partition order. Nothing is announced.

        The fencing epochs are bumped, not deleted: a worker that still owns a shard of the
        model has every later write refused, and a new owner's epoch never repeats an old one.
        The next claim starts the shard with no checkpoint.
        """
        epochs = self._r.scan_iter(match=f"{_glob_escape(self._prefix)}:epoch:{model}:*")
        epoch_keys = [k.decode() if isinstance(k, bytes) else str(k) for k in epochs]
        shards = self.shards(model)
        pipe = self._r.pipeline(transaction=True)
        for key in epoch_keys:
            pipe.incr(key)
        for shard in shards:
            pipe.delete(self._shard_key(shard))
        pipe.delete(f"{self._prefix}:model:{model}:shards")
        pipe.delete(self._timeline_key(model))
        pipe.srem(f"{self._prefix}:models", model)
        deleted = pipe.execute()[len(epoch_keys) : len(epoch_keys) + len(shards)]
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
        members = self._r.smembers(f"{self._prefix}:model:{model}:shards")
        out = []
        for member in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            topic, _, partition = text.rpartition("/")
            out.append(ShardId(model, topic, int(partition)))
        return sorted(out)


def _is_outage(exc: redis.RedisError) -> bool:
    """Whether ``exc`` means Redis cannot serve now (down, unreachable, loading, read-only,
    out of memory, or refusing writes after a failed save), not a bug in the request."""
    if isinstance(
        exc,
        redis_errors.ConnectionError  # BusyLoadingError and AuthenticationError too
        | redis_errors.TimeoutError
        | redis_errors.ReadOnlyError
        | redis_errors.OutOfMemoryError
        | redis_errors.MasterDownError
        | redis_errors.TryAgainError,
    ):
        return True
    return isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(
        ("MISCONF", "NOREPLICAS", "LOADING")
    )


def _address(client: redis.Redis) -> str:
    """Where ``client`` connects, without credentials: ``host:port/db`` or a socket path."""
    kwargs = client.connection_pool.connection_kwargs
    where = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return f"{where}/{kwargs.get('db', 0)}"


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
