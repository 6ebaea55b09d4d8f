"""Signed snapshots of learners, bound to the checkpoint they belong to.

Loading a pickle runs code, so a blob is verified before anything in it is unpickled. Layout
(all integers big-endian)::

    b"LLSNAP" | format (1 byte) | header length (4 bytes) | header (JSON, UTF-8)
              | pickle (protocol 5), zlib-compressed if asked
              | HMAC-SHA256 over everything before it (32 bytes)

Format 2 (this build) signs, in the header, what the checkpoint claims, as JWS signs its
protected header: the key id ``kid`` that signed it, and the ``binding`` (`Binding`):
model, topic, partition, next offset, fencing epoch, version and a digest of the stats,
beside the spec fingerprint, the format, the River and Python versions, the time and the
compression. A reader compares the binding with what the store's fields and the asked-for
shard say, and refuses any difference before unpickling.

Every later format must keep the magic, the format byte, the header length, a JSON header
with ``kid`` and the trailing 32-byte HMAC, so that an older build can tell "signed but
newer" (``SnapshotIncompatible``) from "tampered" (``SnapshotRefused``). Format 1 (no key
id, nothing bound) is refused unless the codec is made with ``accept_legacy`` (the
temporary migration setting ``security.accept_legacy_snapshots``).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import io
import json
import pickle
import platform
import re
import struct
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from livelearn.errors import SnapshotIncompatible, SnapshotRefused

__all__ = [
    "DEFAULT_KEY_ID",
    "SNAPSHOT_FORMAT",
    "Binding",
    "Keyring",
    "SnapshotCodec",
    "stats_digest",
]

SNAPSHOT_FORMAT = 2
LEGACY_FORMAT = 1
# The key id of ``security.snapshot_key``, the single key of configurations before key ids.
DEFAULT_KEY_ID = "default"
KEY_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

_MAGIC = b"LLSNAP"
_PREFIX = struct.Struct(">BI")  # format, header length
_MAC_SIZE = hashlib.sha256().digest_size
_MIN_SIZE = len(_MAGIC) + _PREFIX.size + _MAC_SIZE
# A header holds a few hundred bytes; the bound keeps an unverified one from costing much.
_MAX_HEADER = 64 * 1024
_RIVER_VERSION = importlib.metadata.version("river")


def stats_digest(stats: Mapping[str, Any]) -> str:
    """SHA-256 hex of the stats as the checkpoint store writes them (compact JSON).

    Examples
    --------
    >>> stats_digest({"events_learned": 3}) == stats_digest({"events_learned": 3})
    True
    >>> stats_digest({"events_learned": 3}) == stats_digest({"events_learned": 4})
    False

    """
    return hashlib.sha256(json.dumps(stats, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Binding:
    """What a checkpoint claims, signed with its snapshot: compared field by field on load."""

    model: str
    topic: str
    partition: int
    next_offset: int
    epoch: int
    version: int
    stats: str  # `stats_digest` of the checkpoint's stats

    def differences(self, other: Binding) -> list[str]:
        """``field: signed X, expected Y`` for each field where ``other`` differs."""
        return [
            f"{f.name}: signed {getattr(self, f.name)!r}, expected {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


class Keyring:
    """The HMAC-SHA256 keys by key id: ``active`` signs, every key verifies.

    Parameters
    ----------
    keys
        Secret keys by key id; none may be empty.
    active
        The id of the key that signs; one of ``keys``.

    Examples
    --------
    >>> ring = Keyring({"k1": b"old-secret", "k2": b"new-secret"}, active="k2")
    >>> kid, mac = ring.sign(b"data")
    >>> kid, ring.verify(kid, b"data", mac), ring.verify("k1", b"data", mac)
    ('k2', True, False)

    """

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if active not in keys:
            raise ValueError(f"the active key id {active!r} is not among the keys")
        for kid, key in keys.items():
            if not re.match(KEY_ID_PATTERN, kid):
                raise ValueError(f"key id {kid!r} must match {KEY_ID_PATTERN}")
            if not key:
                raise ValueError(f"key {kid!r} is empty: set a non-empty secret key")
        self._keys = {kid: bytes(key) for kid, key in keys.items()}
        self.active = active

    @classmethod
    def single(cls, key: bytes) -> Keyring:
        """One key, under `DEFAULT_KEY_ID`."""
        if not key:
            raise ValueError("a snapshot key is required: set a non-empty secret key")
        return cls({DEFAULT_KEY_ID: key}, DEFAULT_KEY_ID)

    def __repr__(self) -> str:
        return f"Keyring(ids={sorted(self._keys)}, active={self.active!r})"

    @property
    def ids(self) -> list[str]:
        """The accepted key ids, sorted."""
        return sorted(self._keys)

    def key(self, kid: str) -> bytes | None:
        """The key of ``kid``, None when it is not accepted."""
        return self._keys.get(kid)

    def sign(self, data: bytes) -> tuple[str, str]:
        """The active key id and the hex HMAC-SHA256 of ``data`` under it."""
        return self.active, hmac.new(self._keys[self.active], data, hashlib.sha256).hexdigest()

    def verify(self, kid: str, data: bytes, mac: str) -> bool:
        """Whether ``mac`` is the hex HMAC of ``data`` under ``kid`` (constant time)."""
        key = self._keys.get(kid)
        if key is None or not isinstance(mac, str):
            return False
        return hmac.compare_digest(hmac.new(key, data, hashlib.sha256).hexdigest(), mac)


class SnapshotCodec:
    """Serialize, compress, bind and sign objects; verify and load them back.

    Parameters
    ----------
    key
        A `Keyring`, or one HMAC-SHA256 key (under `DEFAULT_KEY_ID`); must not be empty.
    compress_level
        zlib level, 1 to 9, or 0 (the default) for none. Compression costs the worker's
        thread time at every checkpoint and pays only on a slow or metered link to Redis;
        bench/bench_worker.py measures the worker with checkpoints at this default.
    accept_legacy
        Verify and load format-1 snapshots (nothing bound, no key id) with any accepted key;
        a migration aid only (``security.accept_legacy_snapshots``).

    Examples
    --------
    >>> codec = SnapshotCodec(key=b"k")
    >>> blob = codec.encode({"weights": [1.0, 2.0]})
    >>> codec.decode(blob)
    {'weights': [1.0, 2.0]}
    >>> codec.header(blob)["format"], codec.header(blob)["kid"]
    (2, 'default')
    >>> bound = Binding("m", "t", 0, next_offset=10, epoch=1, version=1, stats=stats_digest({}))
    >>> codec.decode(codec.encode([1], bound), expect=bound)
    [1]

    """

    def __init__(
        self, key: bytes | Keyring, compress_level: int = 0, *, accept_legacy: bool = False
    ) -> None:
        if not 0 <= compress_level <= 9:
            raise ValueError(f"compress_level must be 0 to 9, got {compress_level}")
        self.keys = key if isinstance(key, Keyring) else Keyring.single(key)
        self._level = compress_level
        self._legacy = accept_legacy

    def __repr__(self) -> str:
        return f"SnapshotCodec(keys={self.keys!r}, compress_level={self._level})"

    def encode(self, obj: object, binding: Binding | None = None, spec: str | None = None) -> bytes:
        """Return the snapshot of ``obj``, signed with the active key, bound to ``binding``.

        An unbound snapshot (no ``binding``) is for memory only: a reader that expects a
        binding refuses it. ``spec`` is the fingerprint of the spec the learner learned with.
        """
        kid = self.keys.active
        header: dict[str, Any] = {
            "format": SNAPSHOT_FORMAT,
            "kid": kid,
            "river": _RIVER_VERSION,
            "python": platform.python_version(),
            "created_at": time.time(),
            "compressed": "zlib" if self._level else "none",
            "binding": None if binding is None else asdict(binding),
            "spec": spec,
        }
        header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        payload = pickle.dumps(obj, protocol=5)
        if self._level:
            payload = zlib.compress(payload, self._level)
        head = b"".join((_MAGIC, _PREFIX.pack(SNAPSHOT_FORMAT, len(header_bytes)), header_bytes))
        mac = hmac.new(self.keys.key(kid) or b"", head, hashlib.sha256)
        mac.update(payload)  # signed in place: no copy of a large payload just to sign it
        return b"".join((head, payload, mac.digest()))

    def _verify(self, blob: bytes) -> tuple[dict[str, Any], memoryview]:
        """Check the blob and return its header and compressed payload; unpickle nothing."""
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise SnapshotRefused(f"expected bytes, got {type(blob).__name__}")
        view = memoryview(blob)
        if len(view) < _MIN_SIZE:
            raise SnapshotRefused(
                f"truncated: {len(view)} bytes, a snapshot has at least {_MIN_SIZE}"
            )
        if view[: len(_MAGIC)] != _MAGIC:
            raise SnapshotRefused("not a snapshot (bad magic bytes)")
        body, mac = view[:-_MAC_SIZE], view[-_MAC_SIZE:]
        found_format, header_len = _PREFIX.unpack_from(body, len(_MAGIC))
        start = len(_MAGIC) + _PREFIX.size
        if header_len > min(_MAX_HEADER, len(body) - start):
            raise SnapshotRefused(f"header length {header_len} runs past the end of the blob")
        # Read before it is verified, for its key id alone (as JWS reads ``kid``).
        try:
            header = json.loads(bytes(body[start : start + header_len]))
        except ValueError:
            header = None
        claimed = header.get("kid") if isinstance(header, dict) else None
        if found_format == LEGACY_FORMAT or not isinstance(claimed, str):
            kid = self._legacy_kid(found_format, body, mac)
        else:
            key = self.keys.key(claimed)
            if key is None:
                raise SnapshotRefused(
                    f"signed with key id {claimed!r}, which is not accepted here (accepted: "
                    f"{', '.join(self.keys.ids)}); add it to security.snapshot_keys"
                )
            if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac):
                raise SnapshotRefused(
                    f"signature mismatch under key id {claimed!r}: the blob was altered or "
                    "truncated"
                )
            kid = claimed
        if found_format > SNAPSHOT_FORMAT:
            raise SnapshotIncompatible(
                f"snapshot format {found_format} is not supported by this build "
                f"(it reads format {SNAPSHOT_FORMAT}); upgrade livelearn to load it",
                found_format,
            )
        if not isinstance(header, dict) or header.get("compressed") not in ("zlib", "none"):
            raise SnapshotRefused(f"unexpected header {header!r}")
        if header.get("format", LEGACY_FORMAT) != found_format:
            raise SnapshotRefused(f"header format {header.get('format')!r} != {found_format}")
        return {**header, "kid": kid}, body[start + header_len :]

    def _legacy_kid(self, found_format: int, body: memoryview, mac: memoryview) -> str:
        """The id of the key a snapshot without a usable key id verifies under, if legacy
        snapshots are accepted; else refused."""
        if found_format == LEGACY_FORMAT and not self._legacy:
            raise SnapshotRefused(
                "format 1 snapshot (no key id, not bound to its shard) from before this "
                "build: refused; to migrate, set security.accept_legacy_snapshots: true "
                "until every shard has been checkpointed again, then remove it"
            )
        for kid in self.keys.ids:
            key = self.keys.key(kid) or b""
            if hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), mac):
                return kid
        raise SnapshotRefused(
            "signature mismatch: the blob was altered, truncated or signed with a key that "
            "is not accepted here"
        )

    def header(self, blob: bytes, expect: Binding | None = None) -> dict[str, Any]:
        """Return the verified header of ``blob`` without unpickling its payload.

        Raises
        ------
        SnapshotRefused
            The blob is not a snapshot, is truncated, its signature does not match, its
            key id is not accepted, or it is not bound to ``expect`` (when given).
        SnapshotIncompatible
            The blob is signed but written in a format this build does not know.

        """
        header = self._verify(blob)[0]
        if expect is not None:
            _check_binding(header, expect)
        return header

    def decode(
        self,
        blob: bytes,
        expect: Binding | None = None,
        check: Callable[[Mapping[str, Any]], None] | None = None,
        pause_seconds: float = 0.0,
    ) -> object:
        """Verify ``blob`` and return the object it holds.

        The signature is checked with ``hmac.compare_digest``, the binding compared with
        ``expect`` (when given: always, for what was read from a store), and ``check`` called
        with the verified header (it raises to refuse), before anything is unpickled.

        Parameters
        ----------
        blob
            A signed snapshot.
        expect
            The shard, offsets and version the blob must be bound to.
        check
            Called with the verified header before unpickling; raises to refuse it.
        pause_seconds
            With a positive value, the unpickler sleeps this long between the pickle's frames
            (64 KiB each). Unpickling holds the interpreter's lock from start to end; these
            pauses hand it to the process's other threads (an event loop serving requests
            while a background thread reloads a large model), which then wait for at most
            one frame's work.

        Raises
        ------
        SnapshotRefused
            The blob is not a snapshot, is truncated, its signature does not match, or it
            is not bound to ``expect``.
        SnapshotIncompatible
            The blob is signed but its format is unknown, or its classes cannot be loaded by
            this build (e.g. made with another River version, named in the message).

        """
        header, payload = self._verify(blob)
        if expect is not None:
            _check_binding(header, expect)
        if check is not None:
            check(header)
        data: bytes | memoryview = payload
        if header["compressed"] == "zlib":
            try:
                data = zlib.decompress(payload)
            except zlib.error as exc:
                raise SnapshotRefused(f"payload does not decompress: {exc}") from None
        payload_file = io.BytesIO(data)
        source = _PausingReader(payload_file, pause_seconds) if pause_seconds > 0 else payload_file
        try:
            return _Unpickler(source).load()
        except Exception as exc:
            raise SnapshotIncompatible(
                f"signed snapshot made with river {header.get('river')} and python "
                f"{header.get('python')} cannot be loaded here (river {_RIVER_VERSION}, "
                f"python {platform.python_version()}): {type(exc).__name__}: {exc}",
                SNAPSHOT_FORMAT,
            ) from exc


def _check_binding(header: Mapping[str, Any], expect: Binding) -> None:
    """Refuse a header whose signed binding is not ``expect`` (a legacy one has none)."""
    if header.get("format") == LEGACY_FORMAT:
        return  # accepted only with accept_legacy; the caller logs and rewrites it
    raw = header.get("binding")
    if not isinstance(raw, dict):
        raise SnapshotRefused("not bound to a shard: a snapshot from a store must be")
    try:
        signed = Binding(**raw)
    except TypeError:
        raise SnapshotRefused(f"unreadable binding {raw!r}") from None
    wrong = signed.differences(expect)
    if wrong:
        raise SnapshotRefused("not the checkpoint it is stored as: " + "; ".join(wrong))


# livelearn's packages were top-level modules before they moved under `livelearn`; a
# snapshot signed then names its classes by the old paths (``learners.learner.Learner``).
_MOVED_PACKAGES = ("learners", "settings", "store", "stream", "serving")


class _PausingReader:
    """A file for the unpickler that sleeps before each read of a new frame.

    From protocol 4 on, a pickle comes in frames of about 64 KiB, and the unpickler reads a
    whole frame at once; a large object outside the frames is read whole too. A sleep,
    unlike a mere call into Python, lets a thread waiting for the interpreter's lock take it
    at once, instead of after ``sys.getswitchinterval()``.
    """

    def __init__(self, source: io.BytesIO, pause: float) -> None:
        self._source = source
        self._pause = pause

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size >= _FRAME_READ:
            time.sleep(self._pause)
        return self._source.read(size)

    def readline(self) -> bytes:
        return self._source.readline()


# The smallest read that is a frame or a large object (the unpickler reads opcodes and their
# arguments, a few bytes each, only between frames).
_FRAME_READ = 4096


class _Unpickler(pickle.Unpickler):
    """Loads verified payloads; a class under a package's old top-level path is found under
    ``livelearn``."""

    def find_class(self, module: str, name: str) -> Any:
        if module.partition(".")[0] in _MOVED_PACKAGES:
            module = f"livelearn.{module}"
        return super().find_class(module, name)
