"""The serving API through Feast's own HTTP feature server (`feast serve`), for real."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from kar.features import init_feature_repo, publish
from kar.features.serving import HttpReader, KnowledgeServer


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_feast_serve_gives_the_same_batch_as_the_in_process_reader(tmp_path: Path) -> None:
    repo = init_feature_repo(
        tmp_path / "fr", project="kar_http", vector_dim=8, knowledge_codes=True
    )
    rng = np.random.default_rng(3)
    users = pl.DataFrame(
        {"user_id": ["u1"], "vector": rng.standard_normal((1, 8)).tolist(), "code": [5]}
    )
    items = pl.DataFrame(
        {"item_id": ["a", "b", "c"], "vector": rng.standard_normal((3, 8)).tolist()}
    ).with_columns(code=pl.Series([2, 1, 3]))
    publish(repo, users, items, datetime(2024, 1, 1, tzinfo=UTC))
    port = _free_port()
    feast = str(Path(sys.executable).parent / "feast")
    server = subprocess.Popen(
        [feast, "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"feast serve exited with {server.returncode}")
                time.sleep(0.5)
        else:
            pytest.fail("feast serve did not start within 60 s")
        candidates = ["c", "nope", "a"]
        over_http = KnowledgeServer(repo, reader=HttpReader(url)).get("u1", candidates)
        in_process = KnowledgeServer(repo).get("u1", candidates)
        np.testing.assert_allclose(over_http.user, in_process.user)
        np.testing.assert_allclose(over_http.items, in_process.items)
        assert over_http.items_missing.tolist() == [False, True, False]
        assert over_http.user_code == in_process.user_code == 5
        assert over_http.item_codes.tolist() == in_process.item_codes.tolist() == [3, 0, 2]
        ghost = KnowledgeServer(repo, reader=HttpReader(url)).get("ghost", ["a"])
        assert ghost.user_missing and not ghost.user.any()
    finally:
        server.terminate()
        server.wait(timeout=10)
