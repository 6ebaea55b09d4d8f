"""The local stack's development keys, and the one decision of when a command uses them.

`livelearn demo` and `livelearn serve` take the local stack's (`devtools.stack`) address
for Kafka or Redis when the settings leave it unset: the demo starts the stack first,
serve uses it if it runs. They are then on the local stack when their Redis is the
stack's (`on_local_stack`), and there a key that the settings lack comes from the
development keys kept in ``<stack dir>/dev-keys.json`` (random, made at first use,
readable by the owner only), with a WARNING naming the settings to set for real keys.
Anywhere else a missing key stops the command with a message naming the setting and the
fix. No key's value is ever printed or logged.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import SecretStr

from livelearn.errors import ConfigError

if TYPE_CHECKING:
    from livelearn.devtools.stack import StackInfo
    from livelearn.settings import Settings

__all__ = [
    "FILE_NAME",
    "Key",
    "dev_keys",
    "dev_token",
    "missing",
    "on_local_stack",
    "use_local",
    "with_stack_addresses",
]

log = logging.getLogger("livelearn")

FILE_NAME = "dev-keys.json"

Key = Literal["snapshot_key", "hash_key", "tokens"]
# Each key's setting, and the environment variable that sets it: also its name in the file,
# whose values are those the variables take (the tokens as a JSON list).
_NAMES: dict[Key, tuple[str, str]] = {
    "snapshot_key": ("security.snapshot_key", "LIVELEARN_SECURITY__SNAPSHOT_KEY"),
    "hash_key": ("security.hash_key", "LIVELEARN_SECURITY__HASH_KEY"),
    "tokens": ("serving.tokens", "LIVELEARN_SERVING__TOKENS"),
}
_FIX: dict[Key, str] = {
    "snapshot_key": "a random string of at least 16 characters",
    "hash_key": "a random string of at least 16 characters",
    "tokens": "a JSON list of bearer tokens, e.g. '[\"<a long random string>\"]' (the API "
    "needs at least one)",
}


def with_stack_addresses(settings: Settings, state_dir: Path, *, start: bool) -> Settings:
    """``settings`` with the local stack's address where Kafka or Redis is unset: the stack
    in ``state_dir``, started first when ``start`` (the demo), else only if it runs (serve).
    """
    if settings.kafka.bootstrap_servers and settings.redis.url:
        return settings
    from livelearn.devtools import stack

    if start:
        print("no Kafka/Redis configured: starting the local stack (livelearn stack up)")
        info: StackInfo | None = stack.up(state_dir)
    else:
        info = stack.status(state_dir)
    if info is None:
        return settings
    kafka, redis = settings.kafka, settings.redis
    if not kafka.bootstrap_servers:
        kafka = kafka.model_copy(update={"bootstrap_servers": info.bootstrap_servers})
    if not redis.url:
        redis = redis.model_copy(update={"url": info.redis_url})
    where = {"kafka": kafka.bootstrap_servers, "redis": redis.url}
    log.info("using the local stack in %s", state_dir, extra={"fields": where})
    return settings.model_copy(update={"kafka": kafka, "redis": redis})


def on_local_stack(settings: Settings, state_dir: Path) -> bool:
    """Whether ``settings`` (after `with_stack_addresses`) use the local stack: their Redis
    is the stack's, where its development keys are the ones to use."""
    from livelearn.devtools import stack

    url = settings.redis.url
    return url is not None and stack.is_its_redis(url, state_dir)


def missing(settings: Settings, keys: Sequence[Key]) -> list[Key]:
    """Those of ``keys`` that ``settings`` leave unset (or blank)."""
    absent: list[Key] = []
    for key in keys:
        if key == "tokens":
            values = settings.serving.tokens
        else:
            secret = getattr(settings.security, key)
            values = [] if secret is None else [secret]
            if key == "snapshot_key":  # or keys by key id (security.snapshot_keys)
                values += settings.security.snapshot_keys.values()
        if not any(value.get_secret_value().strip() for value in values):
            absent.append(key)
    return absent


def use_local(
    settings: Settings,
    state_dir: Path,
    needed: Sequence[Key],
    *,
    start: bool,
    optional: Sequence[Key] = (),
) -> Settings:
    """``settings`` completed on the local stack: its addresses where Kafka or Redis is
    unset (`with_stack_addresses`), then, if they use it (`on_local_stack`), the
    development keys where ``needed`` or ``optional`` keys are unset, with a WARNING.

    Raises
    ------
    ConfigError
        Elsewhere, a ``needed`` key is unset: the message names its setting, its
        environment variable and the development keys of the local stack.
    """
    settings = with_stack_addresses(settings, state_dir, start=start)
    lacking = missing(settings, [*needed, *optional])
    if not on_local_stack(settings, state_dir):
        refused = [key for key in lacking if key in needed]
        if refused:
            raise ConfigError(_refusal(refused, state_dir))
        return settings
    if not lacking:
        return settings
    settings = _with_keys(settings, dev_keys(state_dir), lacking)
    log.warning(
        "using DEVELOPMENT keys for %s, from %s: they are the local stack's, not for "
        "production; for real keys set %s",
        ", ".join(_NAMES[key][0] for key in lacking),
        state_dir / FILE_NAME,
        ", ".join(_NAMES[key][1] for key in lacking),
    )
    return settings


def dev_keys(state_dir: Path) -> dict[str, str]:
    """The development keys in ``state_dir``, by environment variable; those missing
    (every one at first, the token in a file from before it was kept) are made and saved.

    Raises
    ------
    ConfigError
        The file is not what livelearn writes.
    """
    path = state_dir / FILE_NAME
    keys: dict[str, str] = {}
    if path.is_file():
        try:
            keys = json.loads(path.read_text())
            if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
                raise ValueError("not an object of strings")
            _tokens(keys)
        except ValueError as error:
            raise ConfigError(
                f"{path} is not a development keys file ({error}); delete it to have new "
                "development keys made (the local stack's checkpoints signed with the old "
                "ones are then refused: livelearn models reset NAME --yes)"
            ) from None
    made = {
        env: json.dumps([secrets.token_urlsafe(32)]) if key == "tokens" else secrets.token_hex(32)
        for key, (_, env) in _NAMES.items()
        if env not in keys
    }
    if made:
        keys = {**keys, **made}
        state_dir.mkdir(parents=True, exist_ok=True)
        fresh = path.with_name(f".{FILE_NAME}.{os.getpid()}")
        fresh.unlink(missing_ok=True)
        with os.fdopen(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            json.dump(keys, out, indent=2)
        fresh.replace(path)
    return keys


def dev_token(state_dir: Path) -> str:
    """The local stack's development API token (made first if there is none)."""
    return _tokens(dev_keys(state_dir))[0]


def _tokens(keys: dict[str, str]) -> list[str]:
    """The tokens of a development keys file; ValueError when they are not a JSON list."""
    raw = keys.get(_NAMES["tokens"][1])
    if raw is None:
        return []
    tokens = json.loads(raw)
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{_NAMES['tokens'][1]} is not a JSON list of strings")
    return tokens


def _with_keys(settings: Settings, keys: dict[str, str], chosen: Sequence[Key]) -> Settings:
    security, serving = settings.security, settings.serving
    for key in chosen:
        env = _NAMES[key][1]
        if key == "tokens":
            tokens = [SecretStr(t) for t in _tokens(keys)]
            serving = serving.model_copy(update={"tokens": tokens})
        else:
            security = security.model_copy(update={key: SecretStr(keys[env])})
    return settings.model_copy(update={"security": security, "serving": serving})


def _refusal(keys: Sequence[Key], state_dir: Path) -> str:
    lines = [f"{_NAMES[key][0]} is not set: set {_NAMES[key][1]} to {_FIX[key]}" for key in keys]
    lines += [
        "A random string: python3 -c 'import secrets; print(secrets.token_hex(32))'.",
        f"On the local stack of `make run` (livelearn stack up), livelearn uses its development "
        f"keys, kept in {state_dir / FILE_NAME}, instead; these settings name another Redis "
        "(redis.url), or none while no local stack runs (livelearn stack status).",
    ]
    return "\n".join(lines)
