"""Releases: numbered, signed freezes of a model's shards, and which one serving uses.

A release copies every shard's signed snapshot with its offset and stats under one
number and a manifest signed with the active snapshot key, its key id beside it. The
manifest names its model and number, and each shard's next offset, epoch, version, stats
digest and blob digest; every read checks the signature, that the manifest is the one
asked for (model and number), and each blob against its digest, and a blob is loaded only
bound to what its row says (`ReleaseShard.binding`). Each shard is verified when a release
is made, so that a tampered checkpoint is never frozen. Serving follows the latest
checkpoints unless the model is pinned to a release (``promote``); ``rollback`` pins
the release before the current one and ``follow`` returns to the latest checkpoints.
Each change is announced on the model's update channel. The newest ``keep`` releases
are kept, and a pinned one is never deleted.

Keys (`store._keys`), all with the model's hash tag, so that on Redis Cluster a release
and its index are written in one transaction::

    {prefix}:{{model}}:release:{n}   hash: manifest, signature, kid, blob:{topic}/{partition}
    {prefix}:{{model}}:releases      sorted set of release numbers
    {prefix}:{{model}}:release_seq   last number given
    {prefix}:{{model}}:pin           the pinned release number (absent: follow latest)

Announcements go on the model's update channel as the checkpoints' do (SPUBLISH on a
cluster).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from livelearn.errors import ReleaseError, SnapshotError
from livelearn.learners.snapshot import Binding, Keyring, SnapshotCodec, stats_digest
from livelearn.store._client import Client
from livelearn.store._keys import Keys
from livelearn.store.checkpoints import Checkpoint, RedisCheckpointStore, ShardId

ReleaseSource = Literal["live", "replay"]

# 2: signed with a key id, bound to model and number, each shard's binding in its row.
_MANIFEST_FORMAT = 2


@dataclass(frozen=True)
class ReleaseShard:
    """One shard of a release: its signed snapshot and what it covers."""

    shard: ShardId
    blob: bytes
    next_offset: int
    stats: dict[str, Any]
    updated_at: float
    # What the blob must be signed as; None for a release made before bindings (loaded
    # only with security.accept_legacy_snapshots).
    binding: Binding | None = None


@dataclass(frozen=True)
class Release:
    """A verified release: its number, manifest and shards."""

    model: str
    number: int
    created_at: float
    source: ReleaseSource
    note: str
    shards: dict[ShardId, ReleaseShard]

    def summary(self) -> dict[str, Any]:
        """JSON-ready description, without the blobs."""
        return {
            "model": self.model,
            "release": self.number,
            "created_at": self.created_at,
            "source": self.source,
            "note": self.note,
            "events_learned": sum(s.stats.get("events_learned", 0) for s in self.shards.values()),
            "shards": [
                {
                    "topic": s.shard.topic,
                    "partition": s.shard.partition,
                    "next_offset": s.next_offset,
                }
                for s in sorted(self.shards.values(), key=lambda s: s.shard)
            ],
        }


class ReleaseStore:
    """Releases and pins in Redis, beside the checkpoints of ``checkpoints``."""

    def __init__(
        self,
        client: Client,
        checkpoints: RedisCheckpointStore,
        key: bytes | Keyring,
        prefix: str = "livelearn",
        keep: int = 10,
        *,
        accept_legacy: bool = False,
    ) -> None:
        if not key:
            raise ValueError("a signing key is required for releases")
        self._r = client
        self._checkpoints = checkpoints
        self._keys = key if isinstance(key, Keyring) else Keyring.single(key)
        self._codec = SnapshotCodec(self._keys, accept_legacy=accept_legacy)
        self._legacy = accept_legacy
        self._names = Keys(prefix)
        self._keep = keep

    # -- keys -------------------------------------------------------------------------

    def _release_key(self, model: str, number: int) -> str:
        return self._names.release(model, number)

    def _index_key(self, model: str) -> str:
        return self._names.releases(model)

    def _pin_key(self, model: str) -> str:
        return self._names.pin(model)

    # -- writing ----------------------------------------------------------------------

    def create(
        self,
        model: str,
        *,
        shards: Mapping[ShardId, Checkpoint] | None = None,
        source: ReleaseSource = "live",
        note: str = "",
    ) -> int:
        """Freeze ``shards`` (default: the model's current checkpoints) as a new release.

        Raises
        ------
        ReleaseError
            When the model has no checkpoint to freeze.
        """
        if shards is None:
            loaded = {s: self._checkpoints.load(s) for s in self._checkpoints.shards(model)}
            shards = {s: c for s, c in loaded.items() if c is not None}
        if not shards:
            raise ReleaseError(f"model {model!r} has no checkpoints to release")
        for s, c in shards.items():
            try:
                self._codec.header(c.blob, c.binding())
            except SnapshotError as exc:
                raise ReleaseError(f"model {model!r}: shard {s} not released: {exc}") from None
        number = int(self._r.incr(self._names.release_seq(model)))
        manifest = {
            "format": _MANIFEST_FORMAT,
            "model": model,
            "number": number,
            "created_at": time.time(),
            "source": source,
            "note": note,
            "shards": [
                {
                    "topic": s.topic,
                    "partition": s.partition,
                    "next_offset": c.next_offset,
                    "epoch": c.epoch,
                    "version": c.version,
                    "stats": c.stats,
                    "stats_sha256": stats_digest(c.stats),
                    "updated_at": c.updated_at,
                    "sha256": hashlib.sha256(c.blob).hexdigest(),
                }
                for s, c in sorted(shards.items())
            ],
        }
        raw = json.dumps(manifest, sort_keys=True).encode()
        kid, signature = self._keys.sign(raw)
        fields: dict[bytes | bytearray | memoryview | str | int | float, Any] = {
            "manifest": raw,
            "signature": signature,
            "kid": kid,
        }
        for s, c in shards.items():
            fields[f"blob:{s.topic}/{s.partition}"] = c.blob
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._release_key(model, number), mapping=fields)
        pipe.zadd(self._index_key(model), {str(number): number})
        pipe.execute()
        self._prune(model)
        self._announce(model, {"release": number})
        return number

    def _prune(self, model: str) -> None:
        numbers = self.numbers(model)
        pinned = self.pinned(model)
        for number in numbers[: max(0, len(numbers) - self._keep)]:
            if number != pinned:
                pipe = self._r.pipeline(transaction=True)
                pipe.delete(self._release_key(model, number))
                pipe.zrem(self._index_key(model), str(number))
                pipe.execute()

    def promote(self, model: str, number: int) -> None:
        """Pin serving to release ``number``."""
        if not self._r.exists(self._release_key(model, number)):
            known = ", ".join(map(str, self.numbers(model))) or "none"
            raise ReleaseError(f"model {model!r} has no release {number} (releases: {known})")
        self._r.set(self._pin_key(model), str(number))
        self._announce(model, {"pin": number})

    def rollback(self, model: str) -> int:
        """Pin the release before the current one (the newest, when following); return it."""
        numbers = self.numbers(model)
        pinned = self.pinned(model)
        earlier = [n for n in numbers if pinned is None or n < pinned]
        if not earlier:
            where = f"release {pinned}" if pinned is not None else "the latest checkpoints"
            raise ReleaseError(f"model {model!r} has no release to roll back to from {where}")
        self.promote(model, earlier[-1])
        return earlier[-1]

    def follow(self, model: str) -> None:
        """Serve the latest checkpoints again."""
        self._r.delete(self._pin_key(model))
        self._announce(model, {"pin": None})

    def _announce(self, model: str, message: dict[str, Any]) -> None:
        channel, body = self._checkpoints.channel(model), json.dumps(message)
        if self._checkpoints.cluster:
            self._r.spublish(channel, body)
        else:
            self._r.publish(channel, body)

    # -- reading ----------------------------------------------------------------------

    def numbers(self, model: str) -> list[int]:
        """The model's release numbers, oldest first."""
        members: list[bytes] = self._r.zrange(self._index_key(model), 0, -1)  # type: ignore[assignment]
        return [int(n) for n in members]

    def pinned(self, model: str) -> int | None:
        """The release serving is pinned to, or None when it follows the latest."""
        raw = self._r.get(self._pin_key(model))
        return None if raw is None else int(raw)

    def kid(self, model: str, number: int) -> str | None:
        """The key id that signed release ``number``'s manifest, as the store says."""
        raw = self._r.hget(self._release_key(model, number), "kid")
        return None if raw is None else bytes(raw).decode(errors="replace")  # type: ignore[arg-type]

    def _verified(self, raw: dict[bytes, bytes], model: str, number: int) -> dict[str, Any]:
        """The manifest of a release hash, refused unless signed by an accepted key and
        bound to ``model`` and ``number``."""
        where = f"release {number} of {model!r}"
        manifest_raw = raw.get(b"manifest", b"")
        signature = raw.get(b"signature", b"").decode(errors="replace")
        kid = raw.get(b"kid", b"").decode(errors="replace")
        if kid:
            ok = self._keys.verify(kid, manifest_raw, signature)
        elif self._legacy:  # before key ids: signed with the one key there was
            ok = any(self._keys.verify(k, manifest_raw, signature) for k in self._keys.ids)
        else:
            raise ReleaseError(
                f"{where}: manifest from before key ids, refused; set "
                "security.accept_legacy_snapshots: true to load it while migrating"
            )
        if not ok:
            accepted = ", ".join(self._keys.ids)
            raise ReleaseError(
                f"{where}: manifest signature mismatch (key id {kid or 'none'!r}; accepted: "
                f"{accepted})"
            )
        try:
            manifest: dict[str, Any] = json.loads(manifest_raw)
        except ValueError as exc:
            raise ReleaseError(f"{where}: unreadable manifest: {exc}") from None
        if manifest.get("model") != model or manifest.get("number") != number:
            raise ReleaseError(
                f"{where}: the manifest is release {manifest.get('number')!r} of "
                f"{manifest.get('model')!r}, moved here"
            )
        return manifest

    def get(self, model: str, number: int) -> Release:
        """Release ``number``, its manifest verified (each blob is verified when loaded).

        Raises
        ------
        ReleaseError
            When it does not exist, its manifest is not signed by an accepted key or is not
            this release's (another model or number), or a blob was altered or replaced.
        """
        raw: dict[bytes, bytes] = self._r.hgetall(self._release_key(model, number))  # type: ignore[assignment]
        if not raw:
            raise ReleaseError(f"model {model!r} has no release {number}")
        manifest = self._verified(raw, model, number)
        shards: dict[ShardId, ReleaseShard] = {}
        for row in manifest["shards"]:
            shard = ShardId(model, row["topic"], int(row["partition"]))
            blob = raw.get(f"blob:{shard.topic}/{shard.partition}".encode(), b"")
            if not hmac.compare_digest(hashlib.sha256(blob).hexdigest(), row["sha256"]):
                raise ReleaseError(f"release {number} of {model!r}: blob of {shard} was altered")
            binding = None
            if "version" in row:
                binding = Binding(
                    model,
                    shard.topic,
                    shard.partition,
                    int(row["next_offset"]),
                    int(row["epoch"]),
                    int(row["version"]),
                    row["stats_sha256"],
                )
            shards[shard] = ReleaseShard(
                shard,
                blob,
                int(row["next_offset"]),
                row["stats"],
                float(row["updated_at"]),
                binding,
            )
        return Release(
            model,
            number,
            float(manifest["created_at"]),
            manifest["source"],
            manifest.get("note", ""),
            shards,
        )

    def latest(self, model: str) -> int | None:
        """The newest release number, or None."""
        numbers = self.numbers(model)
        return numbers[-1] if numbers else None
