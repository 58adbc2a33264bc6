"""A session pins its model version on every replica: one that serves another version refuses it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from procs import MODEL_REPOSITORY
from rnnserve.client import AsyncClient, NotFoundError


def _repository(root: Path, version: int) -> Path:
    """Only timemachine (fast to load), as ``version`` (same weights, another number)."""
    source = MODEL_REPOSITORY / "timemachine" / "1"
    target = root / "timemachine" / str(version)
    target.mkdir(parents=True)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["version"] = version
    (target / "config.json").write_text(json.dumps(config), encoding="utf-8")
    shutil.copyfile(source / "model.pt", target / "model.pt")  # links are refused (security)
    return root


async def test_a_replica_serving_another_version_does_not_continue_the_session(
        make_server, redis_url, tmp_path):
    common = {"session_store": redis_url, "metrics_port": -1}
    v1 = await make_server(model_repository=_repository(tmp_path / "one", 1), **common)
    v2 = await make_server(model_repository=_repository(tmp_path / "two", 2), **common)
    async with AsyncClient(v1.target, retries=0) as one, AsyncClient(v2.target, retries=0) as two:
        opened = await one.generate("the time", max_tokens=5, keep_session=True)
        assert opened.model_version == 1
        try:
            await two.generate(" more", session_id=opened.session_id, max_tokens=5)
            raise AssertionError("version 2 continued a version 1 state")
        except NotFoundError as err:
            assert "no longer loaded" in err.details
        # the state is gone for every replica, not only for the one that refused it
        try:
            await one.generate(" more", session_id=opened.session_id, max_tokens=5)
            raise AssertionError("the refused session still continued")
        except NotFoundError as err:
            assert "no longer loaded" in err.details
