"""Settings: a YAML file overridden by ``LIVELEARN_…`` environment variables.

Nested settings are reached with ``__``: ``LIVELEARN_KAFKA__BOOTSTRAP_SERVERS``,
``LIVELEARN_SECURITY__SNAPSHOT_KEY``. Secrets are ``SecretStr`` and never logged.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    YamlConfigSettingsSource,
)

from livelearn.errors import ConfigError
from livelearn.learners import DEFAULT_KEY_ID, Keyring, ModelSpec, SnapshotCodec
from livelearn.learners.snapshot import KEY_ID_PATTERN

DEFAULT_CONFIG = Path("config/livelearn.yaml")
ENV_PREFIX = "LIVELEARN_"

AutoOffsetReset = Literal["earliest", "latest"]
# The worker's Kafka consumer: librdkafka through confluent-kafka (stream/_confluent.py), or
# kafka-python (stream/fetcher.py).
KafkaClient = Literal["confluent", "kafka-python"]
# How a consumer group moves partitions between its members: "eager" revokes every
# partition of every member at each rebalance; "cooperative" (librdkafka's
# cooperative-sticky assignor) moves only the partitions that change owner.
KafkaAssignment = Literal["eager", "cooperative"]
LogFormat = Literal["auto", "json", "text"]

_SECRET_FIELDS = frozenset({"snapshot_key", "snapshot_keys", "hash_key", "password", "tokens"})

_config_path: ContextVar[Path | None] = ContextVar("livelearn_config_path", default=None)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def server_list(bootstrap_servers: str) -> list[str]:
    """``kafka.bootstrap_servers`` as the list kafka-python takes (librdkafka takes the
    comma-separated string itself).

    >>> server_list("k1:9092, k2:9092,k3:9092")
    ['k1:9092', 'k2:9092', 'k3:9092']
    """
    return [server.strip() for server in bootstrap_servers.split(",") if server.strip()]


class KafkaSettings(_Section):
    bootstrap_servers: str | None = None
    # Which client the worker runs: librdkafka's, which measured faster end to end
    # (bench/bench_worker.py), or kafka-python's, pure Python, fully supported and tested.
    client: KafkaClient = "confluent"
    group_id: str = "livelearn"
    client_id: str = "livelearn-worker"
    auto_offset_reset: AutoOffsetReset = "earliest"
    dlq_suffix: str = ".dlq"
    # A short session lets a crashed worker's partitions move on within seconds;
    # heartbeats run on their own thread, so long learn batches do not trip it.
    session_timeout_ms: int = Field(10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100)
    # Must exceed the time to learn one poll batch plus a checkpoint of every shard.
    max_poll_interval_ms: int = Field(300_000, ge=10_000)
    max_poll_records: int = Field(2000, ge=1)
    # kafka-python parses records in Python; bigger fetches cut its per-event cost, which
    # bench/bench_worker.py's "kafka+json" column measures at these sizes. fetch_max_bytes
    # caps the total.
    max_partition_fetch_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1_000_000_000)
    # librdkafka accepts no fetch above this (its fetch.max.bytes bound); kafka-python agrees.
    fetch_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=2_147_483_135)
    # A fetch waits on the broker until it has fetch_min_bytes or fetch_max_wait_ms has passed
    # (both clients' own defaults: a record is returned as soon as there is one).
    fetch_min_bytes: int = Field(1, ge=1, le=100_000_000)
    fetch_max_wait_ms: int = Field(500, ge=0, le=300_000)
    # librdkafka only: its queue of records fetched ahead of the worker. Fetching stops while
    # the queue holds queued_max_messages_kbytes or, per partition, queued_min_messages. Kept
    # at one whole fetch (fetch_max_bytes), so that a fetch is never held back; records
    # queued for a partition that a rebalance takes away are dropped, so a larger queue
    # only costs memory.
    queued_max_messages_kbytes: int = Field(64 * 1024, ge=1, le=2_097_151)
    queued_min_messages: int = Field(100_000, ge=1, le=10_000_000)
    poll_timeout_ms: int = Field(200, ge=1)
    # How soon a worker sees new partitions or a topic created after it started;
    # one metadata request per period is cheap.
    metadata_max_age_ms: int = Field(10_000, ge=1_000)
    # Run the Kafka consumer (fetching, record parsing, group membership) in a child
    # process, so it uses a second core instead of the learning thread's time.
    # Turn it off where a worker has a single core. kafka-python only: librdkafka fetches
    # and parses on threads of its own, outside the GIL.
    fetch_in_child: bool = True
    # How the worker's group rebalances. "cooperative" needs kafka.client: confluent
    # (kafka-python offers no cooperative assignor), and every member of a group must use the
    # same one: a group forms only on a protocol all its members offer, so it cannot mix them.
    assignment: KafkaAssignment = "eager"

    @model_validator(mode="after")
    def _assignment_has_a_client(self) -> KafkaSettings:
        if self.assignment == "cooperative" and self.client != "confluent":
            raise ValueError(
                f"kafka.assignment is cooperative but kafka.client is {self.client}: "
                "kafka-python rebalances eagerly only; set kafka.client: confluent "
                "(LIVELEARN_KAFKA__CLIENT=confluent), or kafka.assignment: eager "
                "(LIVELEARN_KAFKA__ASSIGNMENT=eager)"
            )
        return self


class RedisSettings(_Section):
    url: str | None = None
    password: SecretStr | None = None
    key_prefix: str = Field("livelearn", pattern=r"^[A-Za-z0-9_.-]+$")
    socket_timeout_s: float = Field(5.0, gt=0)
    # Entries each model's timeline keeps (store/timeline.py), one per checkpoint written.
    timeline_entries: int = Field(10_000, ge=100)
    # Replicas a checkpoint waits for (WAIT) before Kafka's offsets follow it; None: one on
    # a cluster or a server with replicas, none on a lone server.
    wait_replicas: int | None = Field(None, ge=0)
    # How long a checkpoint waits for them; past it the checkpoint stands, counted and
    # logged, and the partition's offset commit waits for a later acknowledged checkpoint.
    # None: 1000 ms, or half of socket_timeout_s when that is shorter.
    wait_timeout_ms: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _wait_within_the_socket_timeout(self) -> RedisSettings:
        # A WAIT longer than the socket's timeout would end in a timeout error for a write
        # that was made: the caller could not tell a written checkpoint from a lost one.
        if (
            self.wait_timeout_ms is not None
            and self.wait_timeout_ms >= self.socket_timeout_s * 1000
        ):
            raise ValueError(
                f"redis.wait_timeout_ms ({self.wait_timeout_ms}) must be below "
                f"redis.socket_timeout_s ({self.socket_timeout_s:g} s): lower "
                "LIVELEARN_REDIS__WAIT_TIMEOUT_MS or raise LIVELEARN_REDIS__SOCKET_TIMEOUT_S"
            )
        return self

    def wait_timeout(self) -> int:
        """``wait_timeout_ms``, or its default.

        >>> RedisSettings(socket_timeout_s=0.5).wait_timeout()
        250
        """
        if self.wait_timeout_ms is not None:
            return self.wait_timeout_ms
        return max(1, min(1000, int(self.socket_timeout_s * 500)))


class OutageSettings(_Section):
    """How long a worker rides out an unreachable Kafka or Redis, and how it retries."""

    # Past this, the worker exits 69 ("dependency unavailable") for its supervisor.
    timeout_s: float = Field(60.0, gt=0)
    # Retries back off from the first delay to the largest, with full jitter.
    retry_initial_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(5.0, gt=0)
    # A subscribed worker that holds no partition (or whose consumer makes no progress
    # while its partitions have lag) for this long recreates its consumer.
    stall_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _retry_bounds(self) -> OutageSettings:
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                f"outage.retry_max_s ({self.retry_max_s}) is less than outage.retry_initial_s "
                f"({self.retry_initial_s}): the longest retry delay must be at least the first "
                "(LIVELEARN_OUTAGE__RETRY_MAX_S, LIVELEARN_OUTAGE__RETRY_INITIAL_S)"
            )
        return self


class DeadLetterSettings(_Section):
    """How dead letters are sent: each is confirmed (acks=all) before a checkpoint passes it."""

    # The producer's largest request: a larger dead letter is sent with its value cut (a
    # header says so). Keep it at or below the dead-letter topics' max.message.bytes.
    max_request_size: int = Field(1024 * 1024, ge=64 * 1024)
    # Sends per dead letter before its shard is held, with an exponential backoff.
    attempts: int = Field(5, ge=1)
    backoff_s: float = Field(0.25, ge=0)
    max_backoff_s: float = Field(4.0, ge=0)
    # How long one attempt waits to connect and for the acknowledgement.
    timeout_s: float = Field(10.0, ge=0.1)


class TopicSettings(_Section):
    """How the topics livelearn creates are replicated and kept (dead letters, predictions,
    the demo's): the defaults suit a cluster of three brokers or more and still work on one."""

    # Copies of each partition; None: three, or as many brokers as the cluster has if fewer.
    replication_factor: int | None = Field(None, ge=1)
    # Copies a write with acks=all waits for; None: two where a partition has three copies
    # or more (one broker may fail with no write lost), else one.
    min_insync_replicas: int | None = Field(None, ge=1)
    # How long records are kept; None: the broker's default (log.retention.hours).
    retention_days: float | None = Field(None, gt=0)
    # Dead letters are kept longer: someone has to look at them.
    dead_letter_retention_days: float | None = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _insync_within_replicas(self) -> TopicSettings:
        rf, isr = self.replication_factor, self.min_insync_replicas
        if rf is not None and isr is not None and isr > rf:
            raise ValueError(
                f"topics.min_insync_replicas ({isr}) is more than topics.replication_factor "
                f"({rf}): no write could ever be acknowledged; lower it to {rf} or less"
            )
        return self


class SecuritySettings(_Section):
    """Keys, and the switches of the checkpoint checks (README, "Security")."""

    # One signing key, under key id "default" (DEFAULT_KEY_ID); or use snapshot_keys.
    snapshot_key: SecretStr | None = None
    # Keys by key id: every one verifies, snapshot_key_id signs (a rotation adds the new key
    # here first, then makes it the signing one, then removes the old one).
    snapshot_keys: dict[str, SecretStr] = {}
    snapshot_key_id: str | None = None
    hash_key: SecretStr | None = None
    # Load format-1 snapshots (from before key ids and bindings) while migrating; each is
    # logged and written again in format 2 at its shard's next checkpoint.
    accept_legacy_snapshots: bool = False
    # Accept checkpoints older than Kafka's committed record of the shard (after Redis was
    # restored from an older backup on purpose); logged. Otherwise they are refused.
    accept_rollback: bool = False

    @model_validator(mode="after")
    def _key_ids(self) -> SecuritySettings:
        for kid in self.snapshot_keys:
            if not re.match(KEY_ID_PATTERN, kid):
                raise ValueError(
                    f"security.snapshot_keys: key id {kid!r} must be 1 to 64 letters, digits, "
                    "'.', '_' or '-'"
                )
        if self.snapshot_key is not None and DEFAULT_KEY_ID in self.snapshot_keys:
            raise ValueError(
                f"security.snapshot_key is the key of id {DEFAULT_KEY_ID!r}, which "
                "security.snapshot_keys also holds: keep one of them"
            )
        known = set(self.snapshot_keys) | ({DEFAULT_KEY_ID} if self.snapshot_key else set())
        if self.snapshot_key_id is not None and self.snapshot_key_id not in known:
            raise ValueError(
                f"security.snapshot_key_id {self.snapshot_key_id!r} is not a key id of "
                f"security.snapshot_keys (ids: {', '.join(sorted(known)) or 'none'}): add "
                "its key there, or name one of those"
            )
        if self.snapshot_key_id is None and len(self.snapshot_keys) > 1 + (
            self.snapshot_key is not None
        ):
            raise ValueError(
                "security.snapshot_keys holds several keys but security.snapshot_key_id does "
                "not say which one signs: set it (LIVELEARN_SECURITY__SNAPSHOT_KEY_ID)"
            )
        return self


ProcessingErrorPolicy = Literal["dead_letter", "stop_shard"]


class EventSettings(_Section):
    id_field: str = "id"
    ts_field: str = "ts"
    key_field: str = "key"
    features_field: str = "features"
    max_bytes: int = Field(65_536, ge=64)
    # Events whose time is older than this many days go to the dead-letter topic
    # (bad_timestamp); None refuses only times before 1970. Keep None for replays of history.
    ts_max_age_days: float | None = Field(None, gt=0)
    # Events more than this far ahead of the worker's clock (skew, a seconds-vs-ms mix-up)
    # go to the dead-letter topic (bad_timestamp).
    ts_max_future_s: float = Field(86_400.0, ge=0)
    # What an exception while sanitizing, predicting, scoring or learning one event does:
    # "dead_letter" sends the event to the dead-letter topic (reason model_error) and the
    # shard goes on exactly as if it had never seen it; "stop_shard" also holds the shard
    # at that event (not learned, reported by /readyz) until someone acts.
    on_processing_error: ProcessingErrorPolicy = "dead_letter"


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(9400, ge=0, le=65_535)


class ServingSettings(_Section):
    """The prediction API and the lookup client."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65_535)
    # Bearer tokens accepted by the API; at least one is required to serve.
    tokens: list[SecretStr] = []
    # Models to serve; empty means every configured model.
    models: list[str] = []
    # Fallback for a missed pub/sub announcement or a dropped connection.
    reload_check_seconds: float = Field(5.0, gt=0)
    keep_releases: int = Field(10, ge=1)
    max_batch: int = Field(1000, ge=1)
    # A predict body larger than this is refused (413) while it streams in, before it is
    # parsed: a full batch of max_batch events of a few dozen features fits.
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    # Features one event may carry (422 past it): the cost of a prediction grows with them,
    # and a model never learns from more than a worker's event (events.max_bytes) can hold.
    max_features: int = Field(10_000, ge=1)
    # A connection sends a request's headers within this time of opening (or of its
    # previous answer), and its body within this time of its headers; else it is closed
    # (with a 408 when it had begun). Slow clients cannot hold connections for ever.
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(10.0, gt=0)
    # An idle keep-alive connection is closed after this.
    keep_alive_seconds: int = Field(5, ge=1)
    # Open connections the server holds (past it a new one takes the place of an idle one,
    # serving/_connections.py) and requests in progress (past it, 503): below the usual
    # 1024 open files, so the server refuses rather than fails to accept.
    max_connections: int = Field(1000, ge=1)
    # Open connections one client address (an IPv6 /64) may hold; past it a new one is
    # answered 503 and closed before any request is read, so that one client cannot take
    # every connection. Enough for a busy client's connection pool; behind a proxy, where
    # every connection comes from its address, raise it to max_connections. At most
    # max_connections (the default follows a lower max_connections).
    max_connections_per_client: int = Field(64, ge=1)
    # Write every served prediction (id, sanitized features, prediction, release) to this
    # Kafka topic, without making a request wait (serving/prediction_log.py); None: off.
    prediction_log_topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    # Prometheus' base URL (http://prometheus:9090): the status page then shows the alerts
    # it reports firing (config/alerts.yml) instead of deriving them (serving/alerts.py).
    alerts_url: str | None = Field(None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")

    @model_validator(mode="after")
    def _client_share(self) -> ServingSettings:
        if (
            "max_connections_per_client" in self.model_fields_set
            and self.max_connections_per_client > self.max_connections
        ):
            raise ValueError(
                f"serving.max_connections_per_client ({self.max_connections_per_client}) is "
                f"more than serving.max_connections ({self.max_connections}): one client "
                "cannot hold more connections than the server; lower it, or raise "
                "serving.max_connections (LIVELEARN_SERVING__MAX_CONNECTIONS_PER_CLIENT, "
                "LIVELEARN_SERVING__MAX_CONNECTIONS)"
            )
        return self


class CheckpointSettings(_Section):
    """The learning thread's time for checkpoints (stream/_budget.py)."""

    # The most of the learning thread's time that checkpoints due by count or by time may
    # take, over the worker's shards together: a checkpoint that took t seconds defers
    # the next due one until t / max_share seconds have passed. Revokes and shutdowns
    # always write at once. 1 turns the bound off: checkpoints keep exactly their spec's
    # cadence, whatever they cost.
    max_share: float = Field(0.1, gt=0, le=1)


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: LogFormat = "auto"
    progress_seconds: float = Field(10.0, gt=0)


class Settings(BaseSettings):
    """Everything a livelearn process reads at start-up."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    outage: OutageSettings = OutageSettings()
    dead_letters: DeadLetterSettings = DeadLetterSettings()
    topics: TopicSettings = TopicSettings()
    security: SecuritySettings = SecuritySettings()
    events: EventSettings = EventSettings()
    http: HttpSettings = HttpSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    log: LogSettings = LogSettings()
    serving: ServingSettings = ServingSettings()
    models: list[ModelSpec] = []

    @model_validator(mode="after")
    def _unique_model_names(self) -> Settings:
        seen: set[str] = set()
        for i, spec in enumerate(self.models):
            if spec.name in seen:
                raise ValueError(f"models[{i}].name {spec.name!r} is used twice; names are unique")
            seen.add(spec.name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def model(self, name: str) -> ModelSpec:
        """The spec named ``name``; ConfigError when there is none."""
        for spec in self.models:
            if spec.name == name:
                return spec
        known = ", ".join(s.name for s in self.models) or "none"
        raise ConfigError(f"no model named {name!r} in settings (models: {known})")

    def require_services(self) -> tuple[str, str]:
        """Kafka bootstrap servers and Redis URL, or ConfigError naming the setting."""
        if not self.kafka.bootstrap_servers:
            raise ConfigError(
                "kafka.bootstrap_servers is not set: set it in the config file or "
                "LIVELEARN_KAFKA__BOOTSTRAP_SERVERS (or start a local stack: livelearn stack up)"
            )
        return self.kafka.bootstrap_servers, self.require_redis_url()

    def require_redis_url(self) -> str:
        """The Redis URL, or ConfigError naming the setting."""
        if not self.redis.url:
            raise ConfigError(
                "redis.url is not set: set it in the config file or LIVELEARN_REDIS__URL "
                "(or start a local stack: livelearn stack up)"
            )
        return self.redis.url

    def require_keyring(self) -> Keyring:
        """The snapshot keys by key id and the one that signs, or ConfigError naming the
        setting (never a key's value)."""
        sec = self.security
        secrets = dict(sec.snapshot_keys)
        if sec.snapshot_key is not None:
            secrets[DEFAULT_KEY_ID] = sec.snapshot_key
        if not secrets:
            self.require_secret("snapshot_key")  # raises, naming the setting and the fix
        for kid, secret in secrets.items():
            if len(secret.get_secret_value()) < 16:
                name = (
                    "security.snapshot_key"
                    if kid == DEFAULT_KEY_ID and sec.snapshot_key is not None
                    else f"security.snapshot_keys.{kid}"
                )
                raise ConfigError(
                    f"{name} is too short: set it to a random string of at least 16 "
                    "characters (e.g. the output of: python -c 'import secrets; "
                    "print(secrets.token_hex(32))')"
                )
        active = sec.snapshot_key_id
        if active is None:
            active = DEFAULT_KEY_ID if sec.snapshot_key is not None else sorted(secrets)[0]
        return Keyring({k: v.get_secret_value().encode() for k, v in secrets.items()}, active)

    def snapshot_codec(self) -> SnapshotCodec:
        """The codec of checkpoints: the keyring, and the migration switch for format 1."""
        return SnapshotCodec(
            self.require_keyring(), accept_legacy=self.security.accept_legacy_snapshots
        )

    def require_secret(self, name: Literal["snapshot_key", "hash_key"]) -> bytes:
        """A security key's bytes, or ConfigError naming the setting."""
        secret: SecretStr | None = getattr(self.security, name)
        value = secret.get_secret_value() if secret is not None else ""
        if len(value) < 16:
            raise ConfigError(
                f"security.{name} is {'too short' if value else 'not set'}: set "
                f"LIVELEARN_SECURITY__{name.upper()} to a random string of at least 16 characters "
                "(e.g. the output of: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return value.encode()


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``path`` (default ``config/livelearn.yaml``) and the environment.

    Raises
    ------
    ConfigError
        When the file is missing or a setting is invalid; the message names each
        bad setting with its value and what is allowed.
    """
    chosen = path if path is not None else Path(os.environ.get("LIVELEARN_CONFIG", DEFAULT_CONFIG))
    if not chosen.is_file():
        if path is not None or chosen != DEFAULT_CONFIG:
            raise ConfigError(f"config file {str(chosen)!r} does not exist: pass --config PATH")
        chosen_or_none: Path | None = None
    else:
        chosen_or_none = chosen
    token = _config_path.set(chosen_or_none)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, chosen_or_none)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_unparsed_env(exc)) from None
    finally:
        _config_path.reset(token)


def _describe_unparsed_env(exc: SettingsError) -> str:
    """Name the environment variable whose list or mapping value is not JSON.

    Its value is never shown: it may be a secret (``LIVELEARN_SERVING__TOKENS``).
    """
    for name, value in sorted(os.environ.items()):
        if not name.startswith(ENV_PREFIX) or not value.lstrip().startswith(("[", "{")):
            continue
        try:
            json.loads(value)
        except ValueError as error:
            example = '["first", "second"]'
            return (
                f"{name} is not valid JSON ({error}): a list or mapping setting is written as "
                f"JSON, e.g. {name}={example} (in single quotes in a shell, bare in a .env file)"
            )
    return f"invalid settings in the environment: {exc}"


def describe_validation_error(exc: ValidationError, path: Path | None) -> str:
    """One line per bad setting: where it is, the value, and what was wrong."""
    where = f" in {path}" if path is not None else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors(include_url=False):
        loc = _format_loc(err.get("loc", ()))
        value = err.get("input")
        secret = any(part in _SECRET_FIELDS for part in err.get("loc", ()))
        shown = "" if isinstance(value, dict) or secret else f" (value: {value!r})"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        env = ENV_PREFIX + "__".join(str(p) for p in err.get("loc", ()) if isinstance(p, str))
        lines.append(f"  {loc}{shown}: {msg} [env override: {env.upper()}]")
    return "\n".join(lines)


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(settings)"
