from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from livelearn.learners import Sanitizer, SanitizeRule

KEY = b"test-key"
MakeSanitizer = Callable[..., Sanitizer]


@pytest.fixture
def make_sanitizer() -> MakeSanitizer:
    """Factory: a sanitizer from ``field=action`` keywords."""

    def make(key: bytes = KEY, **actions: str) -> Sanitizer:
        rules = [SanitizeRule(field=field, action=action) for field, action in actions.items()]
        return Sanitizer(rules, key=key)

    return make


def _expected_token(value: Any, key: bytes = KEY) -> str:
    return "h:" + hmac.new(key, str(value).encode(), hashlib.sha256).hexdigest()[:32]


@pytest.mark.parametrize(
    ("actions", "features", "expected"),
    [
        ({"name": "drop"}, {"name": "Ada", "amount": 2.0}, {"amount": 2.0}),
        (
            {"email": "hash"},
            {"email": "ada@example.org", "amount": 2.0},
            {"email": _expected_token("ada@example.org"), "amount": 2.0},
        ),
        ({"email": "hash", "name": "drop"}, {"amount": 2.0}, {"amount": 2.0}),
        ({"card": "hash"}, {"card": 4111, "x": 1}, {"card": _expected_token("4111"), "x": 1}),
        ({"card": "hash"}, {"card": None}, {"card": _expected_token("None")}),
    ],
    ids=["drop", "hash", "missing-fields-ignored", "non-string-value", "none-value"],
)
def test_apply(
    make_sanitizer: MakeSanitizer,
    actions: dict[str, str],
    features: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    before = dict(features)
    out = make_sanitizer(**actions).apply(features)
    assert out == expected
    assert out is not features
    assert features == before


def test_keeps_feature_order(make_sanitizer: MakeSanitizer) -> None:
    out = make_sanitizer(b="hash", c="drop").apply({"a": 1, "b": 2, "c": 3, "d": 4})
    assert list(out) == ["a", "b", "d"]


def test_token_format(make_sanitizer: MakeSanitizer) -> None:
    token = make_sanitizer(email="hash").apply({"email": "x@y.z"})["email"]
    assert re.fullmatch(r"h:[0-9a-f]{32}", token)


def test_hash_is_stable_and_keyed(make_sanitizer: MakeSanitizer) -> None:
    first = make_sanitizer(email="hash").apply({"email": "ada@example.org"})["email"]
    again = make_sanitizer(email="hash").apply({"email": "ada@example.org"})["email"]
    other_key = make_sanitizer(key=b"other", email="hash").apply({"email": "ada@example.org"})
    unkeyed = "h:" + hashlib.sha256(b"ada@example.org").hexdigest()[:32]
    assert first == again
    assert other_key["email"] != first
    assert unkeyed != first


def test_no_rules_returns_the_input_itself(make_sanitizer: MakeSanitizer) -> None:
    features = {"a": 1}
    assert make_sanitizer().apply(features) is features


def test_no_rules_on_a_read_only_mapping_returns_a_dict(make_sanitizer: MakeSanitizer) -> None:
    out = make_sanitizer().apply(MappingProxyType({"a": 1}))
    assert out == {"a": 1}
    assert type(out) is dict


def test_hash_rule_requires_a_key(make_sanitizer: MakeSanitizer) -> None:
    with pytest.raises(ValueError, match="hash key is empty"):
        make_sanitizer(key=b"", email="hash")


def test_drop_rules_need_no_key(make_sanitizer: MakeSanitizer) -> None:
    assert make_sanitizer(key=b"", name="drop").apply({"name": "Ada"}) == {}
