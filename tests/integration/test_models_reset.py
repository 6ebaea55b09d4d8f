"""`delete_model` and `livelearn models reset` on a real Redis server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from livelearn import StaleEpochError
from livelearn.cli.main import main
from livelearn.learners import SnapshotCodec
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.releases import ReleaseStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_client: redis.Redis, unique_name: str) -> RedisCheckpointStore:
    return RedisCheckpointStore(redis_client, prefix=unique_name)


KEY = b"release-key-0000000000"


def _checkpoint(store: RedisCheckpointStore, shard: ShardId, saves: int = 1) -> int:
    epoch, _ = store.claim(shard)
    for i in range(saves):
        store.write(SnapshotCodec(KEY), shard, epoch, [i], 10 * (i + 1), {"events_learned": i})
    return epoch


def test_delete_model_removes_its_checkpoints_and_fences_its_owners(store, redis_client) -> None:
    shards = [ShardId("m", "t", 1), ShardId("m", "t", 0), ShardId("m", "u.v", 0)]
    epochs = {shard: _checkpoint(store, shard, saves=2) for shard in shards}
    claimed_only = ShardId("m", "t", 2)
    unsaved_epoch, _ = store.claim(claimed_only)  # an owner that has not checkpointed yet
    other = ShardId("m2", "t", 0)
    _checkpoint(store, other)
    pubsub = redis_client.pubsub()
    pubsub.subscribe(store.channel("m"))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"

    assert store.delete_model("m") == sorted(shards)

    assert store.shards("m") == [] and store.models() == ["m2"]
    assert all(store.load(shard) is None for shard in shards)
    assert store.load(other) is not None and store.shards("m2") == [other]
    assert pubsub.get_message(timeout=0.5) is None  # nothing announced
    pubsub.close()
    # An owner from before the reset can write nothing, and no epoch is handed out twice.
    for shard, epoch in [*epochs.items(), (claimed_only, unsaved_epoch)]:
        with pytest.raises(StaleEpochError):
            store.save(shard, epoch, b"zombie", 99, {}, 9)
        new_epoch, checkpoint = store.claim(shard)
        assert checkpoint is None and new_epoch > epoch
        assert store.save(shard, new_epoch, b"fresh", 1, {}, 1) == 1  # versions start again
    assert store.delete_model("absent") == []


def test_models_reset_asks_for_yes_deletes_and_keeps_releases(
    store: RedisCheckpointStore,
    redis_client: redis.Redis,
    unique_name: str,
    services: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shards = [ShardId("m", "t", 0), ShardId("m", "t", 1)]
    for shard in shards:
        _checkpoint(store, shard)
    releases = ReleaseStore(redis_client, store, KEY, unique_name)
    assert releases.create("m") == 1
    config = tmp_path / "livelearn.yaml"
    config.write_text(yaml.safe_dump({"redis": {"key_prefix": unique_name}}))
    monkeypatch.setenv("LIVELEARN_REDIS__URL", services.redis_url)

    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config), "models", "reset", *args])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = run("m")
    assert code == 2 and out == ""
    assert "m/t/0, m/t/1" in err and "--yes" in err and "releases are kept" in err
    assert store.shards("m") == shards

    code, out, _ = run("m", "--yes")
    assert code == 0
    assert out.splitlines()[:2] == ["deleted m/t/0", "deleted m/t/1"]
    assert "2 checkpoint(s) deleted" in out
    assert store.shards("m") == [] and all(store.load(s) is None for s in shards)
    assert releases.numbers("m") == [1] and releases.get("m", 1).summary()["release"] == 1

    code, _, err = run("m", "--yes")
    assert code == 3 and "no checkpoints for model 'm'" in err
