"""Signed snapshots of learners.

Loading a pickle runs code, so a blob is verified before anything in it is unpickled. Layout
(all integers big-endian)::

    b"LLSNAP" | format (1 byte) | header length (4 bytes) | header (JSON, UTF-8)
              | pickle (protocol 5), zlib-compressed if asked
              | HMAC-SHA256 over everything before it (32 bytes)

The header records the format, the River and Python versions the blob was made with, when,
and the compression. Every later format must keep the magic, the format byte and the trailing
32-byte HMAC, so that an older build can tell "signed but newer" (``SnapshotIncompatible``)
from "tampered" (``SnapshotRefused``).
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import io
import json
import pickle
import platform
import struct
import time
import zlib
from typing import Any

from livelearn.errors import SnapshotIncompatible, SnapshotRefused

__all__ = ["SNAPSHOT_FORMAT", "SnapshotCodec"]

SNAPSHOT_FORMAT = 1

_MAGIC = b"LLSNAP"
_PREFIX = struct.Struct(">BI")  # format, header length
_MAC_SIZE = hashlib.sha256().digest_size
_MIN_SIZE = len(_MAGIC) + _PREFIX.size + _MAC_SIZE
_RIVER_VERSION = importlib.metadata.version("river")


class SnapshotCodec:
    """Serialize, compress and sign objects; verify and load them back.

    Parameters
    ----------
    key
        The HMAC-SHA256 key shared by every writer and reader; must not be empty.
    compress_level
        zlib level, 1 to 9, or 0 (the default) for none. Compression costs the worker's
        thread time at every checkpoint and pays only on a slow or metered link to Redis;
        bench/bench_worker.py measures the worker with checkpoints at this default.

    Examples
    --------
    >>> codec = SnapshotCodec(key=b"k")
    >>> blob = codec.encode({"weights": [1.0, 2.0]})
    >>> codec.decode(blob)
    {'weights': [1.0, 2.0]}
    >>> codec.header(blob)["format"]
    1

    """

    def __init__(self, key: bytes, compress_level: int = 0) -> None:
        if not key:
            raise ValueError("a snapshot key is required: set a non-empty secret key")
        if not 0 <= compress_level <= 9:
            raise ValueError(f"compress_level must be 0 to 9, got {compress_level}")
        self._key = bytes(key)
        self._level = compress_level

    def __repr__(self) -> str:
        return f"SnapshotCodec(key=<hidden>, compress_level={self._level})"

    def _mac(self, data: bytes | memoryview) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def encode(self, obj: object) -> bytes:
        """Return the signed snapshot of ``obj``."""
        header = {
            "format": SNAPSHOT_FORMAT,
            "river": _RIVER_VERSION,
            "python": platform.python_version(),
            "created_at": time.time(),
            "compressed": "zlib" if self._level else "none",
        }
        header_bytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        payload = pickle.dumps(obj, protocol=5)
        if self._level:
            payload = zlib.compress(payload, self._level)
        body = b"".join(
            (_MAGIC, _PREFIX.pack(SNAPSHOT_FORMAT, len(header_bytes)), header_bytes, payload)
        )
        return body + self._mac(body)

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
        if not hmac.compare_digest(self._mac(body), mac):
            raise SnapshotRefused(
                "signature mismatch: the blob was altered, truncated or signed with another key"
            )
        found_format, header_len = _PREFIX.unpack_from(body, len(_MAGIC))
        if found_format != SNAPSHOT_FORMAT:
            raise SnapshotIncompatible(
                f"snapshot format {found_format} is not supported by this build "
                f"(it reads format {SNAPSHOT_FORMAT}); upgrade livelearn to load it",
                found_format,
            )
        start = len(_MAGIC) + _PREFIX.size
        if start + header_len > len(body):
            raise SnapshotRefused(f"header length {header_len} runs past the end of the blob")
        try:
            header = json.loads(bytes(body[start : start + header_len]))
        except ValueError as exc:
            raise SnapshotRefused(f"unreadable header: {exc}") from None
        if not isinstance(header, dict) or header.get("compressed") not in ("zlib", "none"):
            raise SnapshotRefused(f"unexpected header {header!r}")
        return header, body[start + header_len :]

    def header(self, blob: bytes) -> dict[str, Any]:
        """Return the verified header of ``blob`` without unpickling its payload.

        Raises
        ------
        SnapshotRefused
            The blob is not a snapshot, is truncated or its signature does not match.
        SnapshotIncompatible
            The blob is signed but written in a format this build does not know.

        """
        return self._verify(blob)[0]

    def decode(self, blob: bytes, pause_seconds: float = 0.0) -> object:
        """Verify ``blob`` and return the object it holds.

        The signature is checked with ``hmac.compare_digest`` before anything is unpickled.

        Parameters
        ----------
        blob
            A signed snapshot.
        pause_seconds
            With a positive value, the unpickler sleeps this long between the pickle's frames
            (64 KiB each). Unpickling holds the interpreter's lock from start to end; these
            pauses hand it to the process's other threads (an event loop serving requests
            while a background thread reloads a large model), which then wait for at most
            one frame's work.

        Raises
        ------
        SnapshotRefused
            The blob is not a snapshot, is truncated or its signature does not match.
        SnapshotIncompatible
            The blob is signed but its format is unknown, or its classes cannot be loaded by
            this build (e.g. made with another River version, named in the message).

        """
        header, payload = self._verify(blob)
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
