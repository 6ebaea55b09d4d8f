"""The dead-letter producer: malformed events, with why and where they came from."""

from __future__ import annotations

from typing import Any, Protocol

from kafka import KafkaProducer


class DeadLetterSink(Protocol):
    """Where the worker sends events it cannot learn from."""

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        *,
        reason: str,
        detail: str,
        source: tuple[str, int, int],
    ) -> None:
        """Queue one dead letter; ``source`` is (topic, partition, offset)."""
        ...

    def flush(self) -> None:
        """Block until every queued dead letter is acknowledged."""
        ...


def dlq_topic(topic: str, suffix: str) -> str:
    """The dead-letter topic of ``topic``.

    >>> dlq_topic("payments", ".dlq")
    'payments.dlq'
    """
    return topic + suffix


class KafkaDeadLetterSink:
    """``DeadLetterSink`` writing to ``<topic><suffix>`` with reason headers."""

    def __init__(self, bootstrap_servers: str, suffix: str, client_id: str) -> None:
        # acks=all: a dead letter must be durable before the checkpoint that skips it.
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_servers,
            client_id=f"{client_id}-dlq",
            acks="all",
            linger_ms=5,
        )
        self._suffix = suffix
        self._pending = 0

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        *,
        reason: str,
        detail: str,
        source: tuple[str, int, int],
    ) -> None:
        """Queue one dead letter; ``source`` is (topic, partition, offset)."""
        src_topic, partition, offset = source
        headers: list[tuple[str, bytes]] = [
            ("livelearn.reason", reason.encode()),
            ("livelearn.detail", detail[:1000].encode()),
            ("livelearn.source.topic", src_topic.encode()),
            ("livelearn.source.partition", str(partition).encode()),
            ("livelearn.source.offset", str(offset).encode()),
        ]
        self._producer.send(dlq_topic(topic, self._suffix), value=value, key=key, headers=headers)
        self._pending += 1

    def flush(self) -> None:
        """Block until every queued dead letter is acknowledged."""
        if self._pending:
            self._producer.flush(timeout=30)
            self._pending = 0

    def close(self) -> None:
        """Flush and close the producer."""
        self.flush()
        self._producer.close(timeout=10)


def read_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
    """A dead letter's ``livelearn.*`` headers as a dict of strings.

    >>> read_headers([("livelearn.reason", b"not_json"), ("other", b"x")])
    {'reason': 'not_json'}
    """
    return {
        k.removeprefix("livelearn."): v.decode()
        for k, v in headers or []
        if k.startswith("livelearn.")
    }
