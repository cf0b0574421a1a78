"""HttpReader when the feature server misbehaves: every bad reply is one FeatureStoreError.

The feature server here is a STAND-IN for ``feast serve``: a stdlib HTTP server in a thread
that answers Feast's ``/get-online-features`` reply shape (what ``feast serve`` itself
returns is checked in tests/test_features_http.py), or one of the faults below.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from kar.errors import FeatureStoreError
from kar.features import init_feature_repo
from kar.features.repo import USER_CODE, USER_FEATURE, USER_VIEW
from kar.features.serving import FeatureRef, HttpReader, KnowledgeServer

DIM = 4
KNOWN = {"u1": [0.1, 0.2, 0.3, 0.4], "a": [1.0, 0.0, 0.0, 0.0], "b": [0.0, 1.0, 0.0, 0.0]}
CODES = {"u1": 5, "a": 2, "b": 3}


def feast_reply(features: list[str], ids: list[str]) -> dict:
    """What ``feast serve`` answers: the join key column, then one column per feature."""
    names = ["id"] + [f.split(":", 1)[1] for f in features]
    results = [{"values": ids, "statuses": ["PRESENT"] * len(ids)}]
    for name in names[1:]:
        table = CODES if name.endswith("_code") else KNOWN
        values = [table.get(i) for i in ids]
        statuses = ["PRESENT" if i in table else "NOT_FOUND" for i in ids]
        results.append({"values": values, "statuses": statuses})
    return {"metadata": {"feature_names": names}, "results": results}


class StandInFeastServer(BaseHTTPRequestHandler):
    """Stand-in for ``feast serve``; the first path segment picks the behaviour."""

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        ids = next(iter(request["entities"].values()))
        behaviour = self.path.strip("/").split("/")[0]
        if behaviour == "ok":
            self._send(200, json.dumps(feast_reply(request["features"], ids)).encode())
        elif behaviour == "detail":
            self._send(200, b'{"detail":"bad request"}')
        elif behaviour == "nofeature":
            reply = feast_reply(["v:other_feature"], ids)
            self._send(200, json.dumps(reply).encode())
        elif behaviour == "short":
            reply = feast_reply(request["features"], ids)
            reply["results"][1]["values"] = reply["results"][1]["values"][:-1]
            self._send(200, json.dumps(reply).encode())
        elif behaviour == "html":
            self._send(200, b"<html><body>proxy login</body></html>", "text/html")
        else:
            self._send(500, b"internal error: worker crashed")

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), StandInFeastServer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


REF = FeatureRef(USER_VIEW, USER_FEATURE, "user_id", DIM, USER_CODE)


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        ("detail", ["unexpected reply", "bad request"]),
        ("nofeature", [f"no feature '{USER_FEATURE}'", "other_feature"]),
        ("short", ["1 values", "2 ids"]),
        ("html", ["not JSON", "proxy login"]),
        ("crash", ["HTTP 500", "worker crashed"]),
    ],
)
def test_a_malformed_reply_is_one_line_naming_the_server(
    server: str, behaviour: str, words: list[str]
) -> None:
    reader = HttpReader(f"{server}/{behaviour}")
    for read in (reader.read, reader.read_rows):
        with pytest.raises(FeatureStoreError) as caught:
            read(REF, ["u1", "zz"])
        message = str(caught.value)
        assert message.startswith(f"feature server {server}/{behaviour}: ")
        assert "\n" not in message
        for word in words:
            assert word in message


def test_an_unreachable_server_with_credentials_never_shows_the_password() -> None:
    reader = HttpReader("http://kar:PLANTED-serving-pw@127.0.0.1:1")
    with pytest.raises(FeatureStoreError) as caught:
        reader.read(REF, ["u1"])
    message = str(caught.value)
    assert "PLANTED-serving-pw" not in message
    assert "feature server http://kar:***@127.0.0.1:1" in message


def test_a_good_reply_reads_vectors_and_codes(server: str) -> None:
    vectors, codes = HttpReader(f"{server}/ok").read_rows(REF, ["u1", "zz"])
    np.testing.assert_allclose(vectors[0], KNOWN["u1"])
    assert vectors[1] is None
    assert codes == [5, 0]


def test_unknown_ids_give_zeros_and_a_missing_flag(server: str, tmp_path: Path) -> None:
    """Regression: unknown user and item ids over HTTP are zeros + missing, no exception."""
    repo = init_feature_repo(tmp_path / "fr", project="kar_faults", vector_dim=DIM)
    knowledge = KnowledgeServer(repo, reader=HttpReader(f"{server}/ok"))
    batch = knowledge.get("ghost", ["a", "nope", "b"])
    assert batch.user_missing and not batch.user.any()
    assert batch.items_missing.tolist() == [False, True, False]
    np.testing.assert_allclose(batch.items[0], KNOWN["a"])
    assert not batch.items[1].any()
    known = knowledge.get("u1", ["nope"])
    assert not known.user_missing
    np.testing.assert_allclose(known.user, KNOWN["u1"])
    assert known.items_missing.tolist() == [True]
