"""Remove or pseudonymise sensitive features before a model sees them."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from livelearn.learners.spec import SanitizeRule

__all__ = ["Sanitizer"]

# 32 hex digits = 128 bits: collisions stay negligible for any realistic number of values.
_HASH_HEX_DIGITS = 32


class Sanitizer:
    """Apply a model's sanitize rules to event features.

    ``drop`` removes a feature; ``hash`` replaces its value by ``"h:"`` and the first 32 hex
    digits of HMAC-SHA256(key, str(value)). The hash is keyed, so whoever guesses a value
    cannot compute its token without the key. Equal values still give equal tokens, which is
    what lets a model learn from them.

    Parameters
    ----------
    rules
        The rules, usually ``ModelSpec.sanitize``.
    key
        The HMAC key; required (non-empty) when a rule hashes.

    Examples
    --------
    >>> sanitizer = Sanitizer(
    ...     [SanitizeRule(field="name", action="drop"), SanitizeRule(field="email", action="hash")],
    ...     key=b"secret",
    ... )
    >>> out = sanitizer.apply({"amount": 3.5, "name": "Ada", "email": "ada@example.org"})
    >>> sorted(out), out["email"][:2], len(out["email"])
    (['amount', 'email'], 'h:', 34)

    """

    def __init__(self, rules: Sequence[SanitizeRule], key: bytes) -> None:
        self._drop = tuple(rule.field for rule in rules if rule.action == "drop")
        self._hash = tuple(rule.field for rule in rules if rule.action == "hash")
        if self._hash and not key:
            raise ValueError(
                f"sanitize rules hash {list(self._hash)} but the hash key is empty; "
                "set a secret key (it keeps hashed values from being guessed)"
            )
        self._key = bytes(key)
        self._active = bool(self._drop or self._hash)

    def hash_value(self, value: Any) -> str:
        """Return the keyed token that replaces ``value``."""
        digest = hmac.new(self._key, str(value).encode(), hashlib.sha256).hexdigest()
        return "h:" + digest[:_HASH_HEX_DIGITS]

    def apply(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """Return a new dict with dropped fields removed and hashed fields replaced.

        The input is never modified; fields the rules name but the event lacks are ignored.
        With no rules the input dict itself is returned (callers must not mutate it).
        """
        if not self._active:
            return features if isinstance(features, dict) else dict(features)
        out = dict(features)
        for field in self._drop:
            out.pop(field, None)
        for field in self._hash:
            if field in out:
                out[field] = self.hash_value(out[field])
        return out
