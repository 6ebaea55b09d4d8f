"""Moving a single server's keys from the layout before hash tags to the tagged one.

Each shard moves in one script: its epoch (the larger of the old and the new one, so that
an epoch never goes down), its hash (the one of higher version wins; the other is
dropped) and its index entry. Each model's releases move in another: the release numbers
(the larger sequence), the index (a union), the pin (the new one wins) and every release
hash not already moved. Both are idempotent, and safe with two workers racing: a second
run finds nothing left to move. Signed content is copied byte for byte; nothing signed
names a key (`learners.snapshot.Binding`, the release manifest), so it keeps verifying.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING

import redis

from livelearn.store._client import keys_matching
from livelearn.store._keys import Keys, LegacyKeys

if TYPE_CHECKING:
    from livelearn.store.checkpoints import ShardId

__all__ = ["migrate_all", "migrate_shard"]

log = logging.getLogger("livelearn.store")

# KEYS: old epoch, old hash, old index, new epoch, new hash, new index; ARGV: index member.
# Returns how many keys moved.
_SHARD_LUA = """
local moved = 0
local old = redis.call('GET', KEYS[1])
if old then
  local new = redis.call('GET', KEYS[4])
  if (not new) or tonumber(old) > tonumber(new) then
    redis.call('SET', KEYS[4], old)
  end
  redis.call('DEL', KEYS[1])
  moved = moved + 1
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  local was = tonumber(redis.call('HGET', KEYS[2], 'version') or '0') or 0
  local now = tonumber(redis.call('HGET', KEYS[5], 'version') or '-1') or -1
  if was > now then
    redis.call('RENAME', KEYS[2], KEYS[5])
    redis.call('SADD', KEYS[6], ARGV[1])
  else
    redis.call('DEL', KEYS[2])
  end
  moved = moved + 1
end
redis.call('SREM', KEYS[3], ARGV[1])
return moved
"""

# KEYS: old sequence, old index, old pin, new sequence, new index, new pin, then (old hash,
# new hash) for each release. Returns how many keys moved.
_RELEASES_LUA = """
local moved = 0
local was = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if was > (tonumber(redis.call('GET', KEYS[4]) or '0') or 0) then
  redis.call('SET', KEYS[4], was)
end
moved = moved + redis.call('DEL', KEYS[1])
local pin = redis.call('GET', KEYS[3])
if pin and redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('SET', KEYS[6], pin)
end
moved = moved + redis.call('DEL', KEYS[3])
for i = 7, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('EXISTS', KEYS[i + 1]) == 0 then
      redis.call('RENAME', KEYS[i], KEYS[i + 1])
    else
      redis.call('DEL', KEYS[i])
    end
    moved = moved + 1
  end
end
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  redis.call('ZADD', KEYS[5], members[i + 1], members[i])
end
moved = moved + redis.call('DEL', KEYS[2])
return moved
"""


def migrate_shard(client: redis.Redis, prefix: str, shard: ShardId) -> int:
    """Move one shard's keys to the tagged layout; how many moved (0 when none was left)."""
    old, new = LegacyKeys(prefix), Keys(prefix)
    m, t, p = shard.model, shard.topic, shard.partition
    keys = [old.epoch(m, t, p), old.shard(m, t, p), old.shards(m)]
    keys += [new.epoch(m, t, p), new.shard(m, t, p), new.shards(m)]
    return int(client.eval(_SHARD_LUA, len(keys), *keys, f"{t}/{p}"))  # type: ignore[no-untyped-call, unused-ignore]


def migrate_all(client: redis.Redis, prefix: str) -> int:
    """Move every shard and release found in the old layout; how many keys moved."""
    from livelearn.store.checkpoints import ShardId

    escaped = prefix.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    shards: set[ShardId] = set()
    for kind in ("shard", "epoch"):
        for key in keys_matching(client, f"{escaped}:{kind}:*"):
            parts = key[len(prefix) + len(kind) + 2 :].split(":")
            if len(parts) == 3 and parts[2].isdigit():
                shards.add(ShardId(parts[0], parts[1], int(parts[2])))
    moved = sum(migrate_shard(client, prefix, shard) for shard in sorted(shards))
    models: dict[str, set[int]] = defaultdict(set)
    for kind in ("releases", "release_seq", "pin"):
        for key in keys_matching(client, f"{escaped}:{kind}:*"):
            models[key[len(prefix) + len(kind) + 2 :]]
    for key in keys_matching(client, f"{escaped}:release:*"):
        model, _, number = key[len(prefix) + len("release") + 2 :].rpartition(":")
        if model and number.isdigit():
            models[model].add(int(number))
    old, new = LegacyKeys(prefix), Keys(prefix)
    for model, numbers in sorted(models.items()):
        keys = [old.release_seq(model), old.releases(model), old.pin(model)]
        keys += [new.release_seq(model), new.releases(model), new.pin(model)]
        for n in sorted(numbers):
            keys += [old.release(model, n), new.release(model, n)]
        moved += int(client.eval(_RELEASES_LUA, len(keys), *keys))  # type: ignore[no-untyped-call, unused-ignore]
    if moved:
        log.warning(
            "moved %d Redis keys of %d shards and %d models' releases to the hash-tagged layout",
            moved,
            len(shards),
            len(models),
            extra={"fields": {"prefix": prefix}},
        )
    return moved
