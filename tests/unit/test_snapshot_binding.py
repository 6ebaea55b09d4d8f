"""Format 2: snapshots bound to their checkpoint, key ids, legacy format 1, the Kafka
ledger's records and the key settings (issue 18)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import pickle
import struct
from typing import Any

import pytest
from kafka import TopicPartition

from livelearn import ConfigError, SnapshotIncompatible, SnapshotRefused
from livelearn.learners import Binding, Keyring, SnapshotCodec, stats_digest
from livelearn.settings import load_settings
from livelearn.stream._ledger import LedgerCodec

OLD, NEW = b"old-key-0123456789abcdef", b"new-key-0123456789abcdef"
STATS = {"events_learned": 10, "metrics": {"accuracy": 0.5}}
BOUND = Binding("m", "t", 3, next_offset=800, epoch=7, version=4, stats=stats_digest(STATS))
SPRUNG: list[str] = []


def _spring() -> None:
    SPRUNG.append("unpickled")


class _Trap:
    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_spring, ())


def _ring(active: str = "k1") -> Keyring:
    return Keyring({"k1": OLD, "k2": NEW}, active)


@pytest.fixture(autouse=True)
def _reset() -> None:
    SPRUNG.clear()


def test_a_bound_snapshot_loads_only_as_what_it_is_bound_to() -> None:
    codec = SnapshotCodec(_ring())
    blob = codec.encode({"w": 1}, BOUND, spec="f" * 64)
    assert codec.decode(blob, BOUND) == {"w": 1}
    header = codec.header(blob, BOUND)
    assert header["binding"]["next_offset"] == 800
    assert (header["kid"], header["spec"]) == ("k1", "f" * 64)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"topic": "u"},
        {"partition": 4},
        {"next_offset": 900},
        {"next_offset": 700},
        {"epoch": 8},
        {"version": 3},
        {"version": 5},
        {"stats": stats_digest({**STATS, "events_learned": 11})},
    ],
    ids=[
        "model",
        "topic",
        "partition",
        "offset-raised",
        "offset-lowered",
        "epoch",
        "version-lowered",
        "version-raised",
        "stats",
    ],
)
def test_each_bound_field_that_differs_is_refused_before_unpickling(
    change: dict[str, Any],
) -> None:
    codec = SnapshotCodec(_ring())
    blob = codec.encode(_Trap(), BOUND)
    expected = dataclasses.replace(BOUND, **change)
    field = next(iter(change))
    with pytest.raises(SnapshotRefused, match=f"{field}: signed"):
        codec.decode(blob, expected)
    with pytest.raises(SnapshotRefused, match=field):
        codec.header(blob, expected)
    assert SPRUNG == []


def test_an_unbound_snapshot_is_refused_where_a_binding_is_expected() -> None:
    codec = SnapshotCodec(_ring())
    blob = codec.encode(_Trap())
    with pytest.raises(SnapshotRefused, match="not bound"):
        codec.decode(blob, BOUND)
    assert SPRUNG == []


def test_the_key_id_is_signed_and_any_accepted_key_verifies() -> None:
    signed_new = SnapshotCodec(_ring(active="k2")).encode([1], BOUND)
    assert SnapshotCodec(_ring(active="k1")).decode(signed_new, BOUND) == [1]
    only_old = SnapshotCodec(Keyring({"k1": OLD}, "k1"))
    with pytest.raises(SnapshotRefused, match="key id 'k2', which is not accepted"):
        only_old.decode(signed_new, BOUND)
    # Claiming another accepted key id does not help: the HMAC is checked under its key.
    relabelled = signed_new.replace(b'"kid":"k2"', b'"kid":"k1"')
    with pytest.raises(SnapshotRefused, match="signature mismatch under key id 'k1'"):
        SnapshotCodec(_ring()).decode(relabelled, BOUND)


def test_the_hmac_uses_the_key_of_the_key_id_and_a_constant_time_compare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blob = SnapshotCodec(_ring(active="k2")).encode([1], BOUND)
    assert blob[-32:] == hmac.new(NEW, blob[:-32], hashlib.sha256).digest()
    calls: list[Any] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    SnapshotCodec(_ring()).decode(blob, BOUND)
    assert calls == [1]


def format_1(key: bytes, obj: object) -> bytes:
    """A snapshot as the build before key ids wrote it."""
    header = json.dumps(
        {"format": 1, "river": "0", "python": "3", "created_at": 0.0, "compressed": "none"},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    body = b"LLSNAP" + struct.pack(">BI", 1, len(header)) + header + pickle.dumps(obj, 5)
    return body + hmac.new(key, body, hashlib.sha256).digest()


def test_a_format_1_snapshot_is_refused_unless_migrating() -> None:
    legacy = format_1(OLD, _Trap())
    with pytest.raises(SnapshotRefused, match="accept_legacy_snapshots"):
        SnapshotCodec(_ring()).decode(legacy, BOUND)
    assert SPRUNG == []
    migrating = SnapshotCodec(_ring(active="k2"), accept_legacy=True)
    assert migrating.header(legacy, BOUND)["kid"] == "k1"
    with pytest.raises(SnapshotRefused, match="signature mismatch"):
        migrating.decode(format_1(b"attacker-key-0123456789", _Trap()), BOUND)
    assert SPRUNG == []


def test_a_newer_format_under_an_accepted_key_is_incompatible_not_tampered() -> None:
    blob = bytearray(SnapshotCodec(_ring()).encode([1], BOUND)[:-32])
    blob[6] = 3
    header_len = struct.unpack(">I", blob[7:11])[0]
    header = json.loads(blob[11 : 11 + header_len])
    header["format"] = 3
    raw = json.dumps(header).encode()
    body = bytes(blob[:7]) + struct.pack(">I", len(raw)) + raw + bytes(blob[11 + header_len :])
    signed = body + hmac.new(OLD, body, hashlib.sha256).digest()
    with pytest.raises(SnapshotIncompatible, match="format 3"):
        SnapshotCodec(_ring()).decode(signed, BOUND)


def test_stats_digest_matches_what_the_store_writes() -> None:
    written = json.dumps(STATS, separators=(",", ":"))  # store/checkpoints.py's form
    assert stats_digest(json.loads(written)) == hashlib.sha256(written.encode()).hexdigest()


@pytest.mark.parametrize(
    ("keys", "active", "message"),
    [
        ({"k1": OLD}, "k2", "active key id"),
        ({"bad id!": OLD}, "bad id!", "must match"),
        ({"k1": b""}, "k1", "empty"),
    ],
    ids=["unknown-active", "bad-id", "empty-key"],
)
def test_a_bad_keyring_is_refused(keys: dict[str, bytes], active: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Keyring(keys, active)


def test_keyring_repr_shows_ids_not_keys() -> None:
    text = repr(_ring()) + repr(SnapshotCodec(_ring()))
    assert "k1" in text and OLD.decode() not in text and NEW.decode() not in text


# -- settings -------------------------------------------------------------------------


def test_the_single_key_is_the_default_key_id() -> None:
    ring = load_settings(security={"snapshot_key": OLD.decode()}).require_keyring()
    assert (ring.ids, ring.active) == (["default"], "default")


def test_keys_by_id_with_the_signing_one_named() -> None:
    settings = load_settings(
        security={
            "snapshot_key": OLD.decode(),
            "snapshot_keys": {"k2": NEW.decode()},
            "snapshot_key_id": "k2",
        }
    )
    ring = settings.require_keyring()
    assert (ring.ids, ring.active) == (["default", "k2"], "k2")
    assert "k2" in repr(settings.snapshot_codec())


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"snapshot_keys": {"k1": OLD.decode(), "k2": NEW.decode()}}, "snapshot_key_id"),
        ({"snapshot_keys": {"k1": OLD.decode()}, "snapshot_key_id": "k9"}, "'k9' is not"),
        ({"snapshot_keys": {"no spaces": OLD.decode()}}, "key id 'no spaces'"),
        (
            {"snapshot_key": OLD.decode(), "snapshot_keys": {"default": NEW.decode()}},
            "keep one of them",
        ),
    ],
    ids=["which-signs", "unknown-id", "bad-id", "default-twice"],
)
def test_a_bad_key_setting_stops_start_up_naming_it_not_its_value(
    security: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(security=security)
    assert OLD.decode() not in str(info.value) and NEW.decode() not in str(info.value)
    assert "security" in str(info.value)


def test_a_short_key_is_named_by_its_id_not_shown() -> None:
    settings = load_settings(
        security={"snapshot_keys": {"k1": OLD.decode(), "k2": "short"}, "snapshot_key_id": "k1"}
    )
    with pytest.raises(ConfigError, match=r"security\.snapshot_keys\.k2 is too short") as info:
        settings.require_keyring()
    assert "short'" not in str(info.value)


# -- the Kafka ledger's records -------------------------------------------------------


def test_a_ledger_record_verifies_only_for_its_group_and_partition() -> None:
    tp = TopicPartition("t", 0)
    codec = LedgerCodec(_ring(), "g")
    record = codec.record(tp, {"m": (4, 800), "n": (2, 790)})
    assert codec.read(tp, record) == {"m": (4, 800), "n": (2, 790)}
    assert codec.read(tp, record + "\x00") == {"m": (4, 800), "n": (2, 790)}  # librdkafka's
    assert codec.read(TopicPartition("t", 1), record) == {}
    assert LedgerCodec(_ring(), "other").read(tp, record) == {}
    assert codec.read(tp, record.replace("800", "900")) == {}
    assert codec.read(tp, "") == {} and codec.read(tp, "not json") == {}
    # Signed with a key still accepted: read; with one retired: ignored.
    assert LedgerCodec(_ring(active="k2"), "g").read(tp, record) == {"m": (4, 800), "n": (2, 790)}
    assert LedgerCodec(Keyring({"k2": NEW}, "k2"), "g").read(tp, record) == {}


def test_a_ledger_record_fits_in_kafka_commit_metadata() -> None:
    tp = TopicPartition("t", 0)
    codec = LedgerCodec(_ring(), "g")
    floors = {f"model-with-a-long-name-{i:03d}": (i, 10**12) for i in range(200)}
    record = codec.record(tp, floors)
    assert len(record) <= 3_500
    kept = codec.read(tp, record)
    assert kept and all(floors[m] == v for m, v in kept.items())
    assert max(v for v, _ in kept.values()) == 199  # the newest are kept
