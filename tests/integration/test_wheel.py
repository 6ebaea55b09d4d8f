"""The wheel as a user installs it: one package, ``livelearn``, beside the user's own modules.

The wheel is built from the repository, installed with the locked runtime dependencies into
an empty virtual environment, and used from a folder that holds modules named like
livelearn's subpackages (``settings.py``, ``cli.py``, ...), as a service of a user's might.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import HASH_KEY, LOGREG_PIPELINE, SNAPSHOT_KEY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUBPACKAGES = ("learners", "settings", "store", "stream", "serving", "cli", "devtools")

# The user's service: its own modules come first on sys.path, and it imports them before it
# uses livelearn's lookup client, as any module of theirs would.
USER_SCRIPT = """
import json, os, sys
import cli, settings
assert settings.OWNER == cli.OWNER == "user", "the user's own modules were not imported"

from river import datasets
from livelearn.learners import Learner, ModelSpec, SnapshotCodec
from livelearn.serving import Lookup
from livelearn.settings import Settings
from livelearn.store.checkpoints import RedisCheckpointStore, ShardId
from livelearn.store.connection import connect_redis

spec = json.loads(os.environ["SPEC"])
live = Settings(
    redis={"url": os.environ["REDIS_URL"], "key_prefix": os.environ["PREFIX"]},
    security={"snapshot_key": os.environ["SNAPSHOT_KEY"], "hash_key": os.environ["HASH_KEY"]},
    models=[spec],
)
model = ModelSpec(**spec)
learner = Learner(model)
rows = list(datasets.Phishing())
for offset, (x, y) in enumerate(rows[:200]):
    learner.process(x, y, offset)
store = RedisCheckpointStore(connect_redis(live), live.redis.key_prefix)
shard = ShardId(model.name, model.topics[0], 0)
epoch, _ = store.claim(shard)
codec = SnapshotCodec(os.environ["SNAPSHOT_KEY"].encode())
store.write(codec, shard, epoch, learner, learner.events_learned, learner.stats())

with Lookup(live) as lookup:
    lookup.start()
    x = rows[500][0]
    got = lookup.predict_one(model.name, x)
    print(json.dumps({
        "served": got.proba,
        "stored": learner.predict_proba_one(x),
        "shards": got.shards,
        "modules": {name: sys.modules[name].__file__ for name in ("cli", "settings")},
        "livelearn": sys.modules["livelearn"].__file__,
    }))
"""


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _uv() -> str:
    uv = shutil.which("uv") or str(REPO / ".tools" / "bin" / "uv")
    if not Path(uv).exists():
        pytest.fail(f"uv is not installed at {uv}: run `make install` first")
    return uv


def _site_packages(venv: Path) -> Path:
    (found,) = (venv / "lib").glob("python3.*/site-packages")
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The built wheel installed in a new venv: its python, and what the wheel added."""
    work = tmp_path_factory.mktemp("wheel")
    uv = _uv()
    # The wheel is built from the sdist, as a user building from PyPI gets it, and no build/
    # folder is left in the checkout.
    _run(uv, "build", "--out-dir", work / "dist", REPO, cwd=REPO)
    (wheel,) = (work / "dist").glob("livelearn-*.whl")
    venv = work / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    locked = work / "locked.txt"
    _run(uv, "export", "--frozen", "--no-emit-project", "--format", "requirements-txt",
         "--output-file", locked, cwd=REPO)  # fmt: skip
    _run(uv, "pip", "install", "--python", python, "--require-hashes", "-r", locked)
    before = set(os.listdir(_site_packages(venv)))
    _run(uv, "pip", "install", "--python", python, "--no-deps", wheel)
    added = set(os.listdir(_site_packages(venv))) - before
    return {"python": python, "bin": venv / "bin", "added": added}


def test_the_wheel_adds_only_livelearn_to_site_packages(installed: dict[str, Any]) -> None:
    added = {name for name in installed["added"] if name != "__pycache__"}
    assert added == {"livelearn", "livelearn-0.1.0.dist-info"}
    site = _site_packages(installed["python"].parent.parent)
    record = (site / "livelearn-0.1.0.dist-info" / "RECORD").read_text().splitlines()
    outside = [
        line.split(",")[0]
        for line in record
        if not line.startswith(("livelearn/", "livelearn-0.1.0.dist-info/", "../../../bin/"))
    ]
    assert outside == []
    for name in SUBPACKAGES:  # the files themselves, not links back into a checkout
        package = site / "livelearn" / name
        assert (package / "__init__.py").is_file() and not package.is_symlink()


def test_lookup_and_command_line_beside_the_users_own_modules(
    installed: dict[str, Any], services: Any, unique_name: str, tmp_path: Path
) -> None:
    service = tmp_path / "service"
    service.mkdir()
    for name in SUBPACKAGES:
        (service / f"{name}.py").write_text(f'OWNER = "user"  # the user\'s own {name}.py\n')
    spec = {
        "name": unique_name,
        "topics": [f"{unique_name}-in"],
        "task": "binary",
        "pipeline": LOGREG_PIPELINE,
        "metrics": ["Accuracy"],
    }
    env = {
        "PATH": f"{installed['bin']}:{os.environ['PATH']}",
        "REDIS_URL": services.redis_url,
        "PREFIX": f"ll-{unique_name}",
        "SNAPSHOT_KEY": SNAPSHOT_KEY,
        "HASH_KEY": HASH_KEY,
        "SPEC": json.dumps(spec),
    }
    (service / "app.py").write_text(USER_SCRIPT)
    out = json.loads(_run(installed["python"], "app.py", cwd=service, env=env))
    assert out["served"] == pytest.approx(out["stored"], abs=1e-12)
    assert out["shards"] == {f"{unique_name}-in/0": 200}
    assert out["modules"] == {
        "cli": str(service / "cli.py"),
        "settings": str(service / "settings.py"),
    }
    assert out["livelearn"].startswith(str(installed["python"].parent.parent))

    usage = _run(installed["bin"] / "livelearn", "--help", cwd=service, env=env)
    assert "worker" in usage and "serve" in usage
