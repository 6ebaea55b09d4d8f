from __future__ import annotations

import hashlib
import hmac
import json
import pickle
import platform
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import river

from livelearn import SnapshotError, SnapshotIncompatible, SnapshotRefused
from livelearn.learners import SNAPSHOT_FORMAT, SnapshotCodec, snapshot

KEY = b"snapshot-test-key"
MakeCodec = Callable[..., SnapshotCodec]

# Set by _spring() when a _Trap is unpickled: proves whether a payload ran.
SPRUNG: list[str] = []


def _spring() -> None:
    SPRUNG.append("unpickled")


class _Trap:
    """Unpickling this object calls _spring(), like a malicious pickle would run code."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return (_spring, ())


class Payload:
    def __init__(self, value: int) -> None:
        self.value = value


@pytest.fixture
def make_codec() -> MakeCodec:
    """Factory: a codec, by default with the shared test key."""

    def make(key: bytes = KEY, compress_level: int = 1) -> SnapshotCodec:
        return SnapshotCodec(key, compress_level=compress_level)

    return make


@pytest.fixture(autouse=True)
def _reset_trap() -> None:
    SPRUNG.clear()


def _resign(body: bytes, key: bytes = KEY) -> bytes:
    return body + hmac.new(key, body, hashlib.sha256).digest()


@pytest.mark.parametrize(
    "obj",
    [{"a": [1.0, 2.5], "b": None}, list(range(1000)), b"\x00" * 10, "text"],
    ids=["dict", "list", "bytes", "str"],
)
@pytest.mark.parametrize("level", [0, 1, 9], ids=["level0", "level1", "level9"])
def test_round_trip(make_codec: MakeCodec, obj: object, level: int) -> None:
    codec = make_codec(compress_level=level)
    assert codec.decode(codec.encode(obj)) == obj


def test_round_trip_of_a_custom_class(make_codec: MakeCodec) -> None:
    codec = make_codec()
    restored = codec.decode(codec.encode(Payload(7)))
    assert isinstance(restored, Payload)
    assert restored.value == 7


def test_layout(make_codec: MakeCodec) -> None:
    blob = make_codec().encode({"x": 1})
    assert blob.startswith(b"LLSNAP")
    assert blob[6] == SNAPSHOT_FORMAT == 2
    (header_len,) = struct.unpack(">I", blob[7:11])
    header = json.loads(blob[11 : 11 + header_len])
    assert header["format"] == 2
    assert header["kid"] == "default"
    assert blob[-32:] == hmac.new(KEY, blob[:-32], hashlib.sha256).digest()


def test_header_holds_versions(make_codec: MakeCodec) -> None:
    before = time.time()
    header = make_codec().header(make_codec().encode([1, 2, 3]))
    assert header["format"] == SNAPSHOT_FORMAT
    assert header["river"] == river.__version__
    assert header["python"] == platform.python_version()
    assert header["compressed"] == "zlib"
    assert before - 1 <= header["created_at"] <= time.time() + 1


def test_header_does_not_unpickle(make_codec: MakeCodec) -> None:
    codec = make_codec()
    blob = codec.encode(_Trap())
    assert codec.header(blob)["format"] == SNAPSHOT_FORMAT
    assert SPRUNG == []


def test_every_flipped_byte_is_refused(make_codec: MakeCodec) -> None:
    codec = make_codec()
    blob = codec.encode({"weights": [0.5, -1.25]})
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(SnapshotRefused):
            codec.decode(bytes(tampered))
        with pytest.raises(SnapshotRefused):
            codec.header(bytes(tampered))


@pytest.mark.parametrize("cut", [0, 1, 6, 11, 40, -33, -32, -1], ids=lambda c: f"cut{c}")
def test_truncated_blob_is_refused(make_codec: MakeCodec, cut: int) -> None:
    codec = make_codec()
    blob = codec.encode({"x": 1})
    with pytest.raises(SnapshotRefused):
        codec.decode(blob[:cut])


def test_appended_bytes_are_refused(make_codec: MakeCodec) -> None:
    codec = make_codec()
    with pytest.raises(SnapshotRefused):
        codec.decode(codec.encode({"x": 1}) + b"\x00")


def test_unsigned_blob_is_refused(make_codec: MakeCodec) -> None:
    codec = make_codec()
    blob = codec.encode({"x": 1})
    with pytest.raises(SnapshotRefused, match="signature"):
        codec.decode(blob[:-32] + b"\x00" * 32)


def test_bad_magic_is_refused(make_codec: MakeCodec) -> None:
    codec = make_codec()
    blob = codec.encode({"x": 1})
    with pytest.raises(SnapshotRefused, match="magic") as info:
        codec.decode(_resign(b"XXSNAP" + blob[6:-32]))
    assert "magic" in info.value.reason


def test_wrong_key_is_refused(make_codec: MakeCodec) -> None:
    blob = make_codec(key=b"another-key").encode({"x": 1})
    with pytest.raises(SnapshotRefused, match="signature"):
        make_codec().decode(blob)


def test_non_bytes_are_refused(make_codec: MakeCodec) -> None:
    with pytest.raises(SnapshotRefused, match="expected bytes"):
        make_codec().decode("LLSNAP")  # type: ignore[arg-type]


def test_tampered_pickle_is_never_unpickled(make_codec: MakeCodec) -> None:
    attacker = make_codec(key=b"attacker-guess")
    blob = attacker.encode(_Trap())
    # Control: the payload does run code when a reader trusts it.
    attacker.decode(blob)
    assert SPRUNG == ["unpickled"]
    SPRUNG.clear()

    with pytest.raises(SnapshotRefused):
        make_codec().decode(blob)
    with pytest.raises(SnapshotRefused):
        make_codec().header(blob)
    assert SPRUNG == []


def test_payload_swapped_into_a_genuine_blob_is_never_unpickled(make_codec: MakeCodec) -> None:
    codec = make_codec()
    genuine = codec.encode({"x": 1})
    evil = make_codec(key=b"attacker-guess").encode(_Trap())
    (header_len,) = struct.unpack(">I", genuine[7:11])
    (evil_header_len,) = struct.unpack(">I", evil[7:11])
    spliced = genuine[: 11 + header_len] + evil[11 + evil_header_len : -32] + genuine[-32:]
    with pytest.raises(SnapshotRefused):
        codec.decode(spliced)
    assert SPRUNG == []


def test_unknown_format_is_incompatible(make_codec: MakeCodec) -> None:
    codec = make_codec()
    body = bytearray(codec.encode({"x": 1})[:-32])
    body[6] = SNAPSHOT_FORMAT + 1
    blob = _resign(bytes(body))
    with pytest.raises(SnapshotIncompatible, match="format 2") as info:
        codec.decode(blob)
    assert info.value.found_format == SNAPSHOT_FORMAT + 1
    with pytest.raises(SnapshotIncompatible):
        codec.header(blob)


def test_signed_blob_whose_classes_are_gone_is_incompatible(
    make_codec: MakeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = make_codec()
    blob = codec.encode(Payload(1))
    monkeypatch.delattr(sys.modules[__name__], "Payload")
    with pytest.raises(SnapshotIncompatible, match=f"river {river.__version__}"):
        codec.decode(blob)


def test_errors_form_a_tree() -> None:
    assert issubclass(SnapshotRefused, SnapshotError)
    assert issubclass(SnapshotIncompatible, SnapshotError)


@pytest.mark.parametrize(
    ("key", "level", "message"),
    [(b"", 1, "key is required"), (KEY, 10, "compress_level"), (KEY, -1, "compress_level")],
    ids=["empty-key", "level-too-high", "level-negative"],
)
def test_bad_construction(key: bytes, level: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SnapshotCodec(key, compress_level=level)


def test_repr_hides_the_key(make_codec: MakeCodec) -> None:
    assert KEY.decode() not in repr(make_codec())


def test_signature_is_checked_in_constant_time(
    make_codec: MakeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Any] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    codec = make_codec()
    codec.decode(codec.encode(1))
    assert len(calls) == 1


def test_load_learner_refuses_a_signed_blob_that_is_not_a_learner() -> None:
    from livelearn import SnapshotRefused
    from livelearn.learners import SnapshotCodec, load_learner

    codec = SnapshotCodec(b"k" * 32)
    with pytest.raises(SnapshotRefused, match="holds a dict, not a Learner"):
        load_learner(codec, codec.encode({"weights": [1.0]}))


def test_a_snapshot_signed_before_the_livelearn_namespace_still_loads(
    make_codec: MakeCodec,
) -> None:
    """A checkpoint signed when the packages were top-level names its classes by the old
    paths (``learners.monitor.MonitorSpec``); it loads as the same class under livelearn."""
    from livelearn.learners.monitor import MonitorSpec

    spec = MonitorSpec()
    legacy = pickle.dumps(spec, protocol=0).replace(b"clivelearn.learners.", b"clearners.")
    assert b"clearners.monitor\nMonitorSpec" in legacy
    blob = make_codec(compress_level=0).encode(None)
    (header_len,) = struct.unpack(">I", blob[7:11])
    restored = make_codec().decode(_resign(blob[: 11 + header_len] + legacy))
    assert type(restored) is MonitorSpec
    assert restored == spec


def test_decode_with_pauses_sleeps_between_frames_and_returns_the_same_object(
    make_codec: MakeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec = make_codec(compress_level=0)
    obj = {"weights": [float(i) for i in range(40_000)], "name": "tree"}
    blob = codec.encode(obj)
    pauses: list[float] = []
    monkeypatch.setattr(snapshot.time, "sleep", pauses.append)
    assert codec.decode(blob) == obj
    assert pauses == []
    assert codec.decode(blob, pause_seconds=0.001) == obj
    # One pause a 64 KiB frame at least: the payload is several frames long.
    assert len(pauses) >= len(blob) // (64 * 1024)
    assert set(pauses) == {0.001}


def test_decode_with_pauses_still_refuses_a_forged_blob_before_unpickling(
    make_codec: MakeCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(snapshot.time, "sleep", pauses.append)
    forged = make_codec(key=b"attacker-guess").encode([_Trap(), list(range(100_000))])
    with pytest.raises(SnapshotRefused):
        make_codec().decode(forged, pause_seconds=0.001)
    assert SPRUNG == []
    assert pauses == []  # refused before the unpickler read anything
