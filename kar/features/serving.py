"""Fast serving path: one user x N candidate items as arrays for a CTR model.

Items' knowledge changes only when it is refreshed, so item vectors are cached in process
(one float32 matrix, looked up by id) and the cache is dropped when the item feature's
version changes in the registry (checked every ``version_check_s``), after
``item_cache_ttl_s`` (for push-only refreshes), or on :meth:`KnowledgeServer.invalidate`.
The user's vector is read from the online store on every request. Unknown ids give zeros
and a missing flag, never an exception. Where the repo publishes discrete knowledge codes,
they come back beside the vectors (``KnowledgeBatch.user_code`` / ``item_codes``; 0 = none).

Readers: :class:`StoreReader` reads the repo's online store in process (SQLite, Redis,
PostgreSQL: whatever ``feature_store.yaml`` names) through Feast's provider;
:class:`HttpReader` reads Feast's own HTTP feature server (``feast serve``);
:class:`SdkReader` goes through Feast's ``get_online_features``. :class:`OnlineKnowledge` is
a :class:`KnowledgeServer` over :class:`SdkReader` that caches nothing (every request reads
every id again).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from kar.errors import FeatureStoreError
from kar.features.online import KnowledgeBatch, code_value
from kar.features.repo import (
    ITEM_CODE,
    ITEM_FEATURE,
    ITEM_VIEW,
    USER_CODE,
    USER_FEATURE,
    USER_VIEW,
    feature_store,
    read_settings,
)
from kar.redaction import redact, redact_url


@dataclass(frozen=True)
class FeatureRef:
    """Where one entity's vectors live: feature view, feature name, join key, dimension, and
    the view's knowledge-code feature (None when it has none)."""

    view: str
    feature: str
    join_key: str
    dim: int
    code_feature: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.view}:{self.feature}"


def resolve_feature(repo: Path, entity: str, spec: str | None) -> FeatureRef:
    """``None``: the built-in ``<entity>_knowledge`` view; ``"name"`` / ``"name@2"``: a
    declared feature (newest active version, or the pinned one)."""
    from kar.features.declare import get_feature

    if spec is None:
        view, feature, code = (
            (USER_VIEW, USER_FEATURE, USER_CODE)
            if entity == "user"
            else (ITEM_VIEW, ITEM_FEATURE, ITEM_CODE)
        )
        settings = read_settings(repo)
        return FeatureRef(
            view,
            feature,
            f"{entity}_id",
            int(settings["vector_dim"]),
            code if settings.get("knowledge_codes") else None,
        )
    name, _, version = spec.partition("@")
    try:
        declared = get_feature(repo, name, int(version) if version else None)
    except ValueError as exc:
        raise FeatureStoreError(f"feature {spec!r}: version must be an integer") from exc
    if declared.entity != entity:
        raise FeatureStoreError(f"feature {spec!r} is a {declared.entity} feature, not {entity}")
    if declared.retired:
        raise FeatureStoreError(f"feature {declared.view} is retired")
    return FeatureRef(declared.view, declared.name, declared.join_key, declared.dim)


class Reader(Protocol):
    """Reads vectors; a reader may also offer ``read_rows`` (vectors and codes in one read)."""

    def read(self, ref: FeatureRef, ids: Sequence[str]) -> list[np.ndarray | None]: ...

    def revision(self, ref: FeatureRef) -> str: ...


def read_rows(
    reader: Reader, ref: FeatureRef, ids: Sequence[str]
) -> tuple[list[np.ndarray | None], list[int]]:
    """Vectors and codes (0 = none) of ``ids``, through the reader's ``read_rows`` when it has
    one and the view has codes; codes are zeros otherwise."""
    rows = getattr(reader, "read_rows", None)
    if ref.code_feature is not None and rows is not None:
        return rows(ref, ids)
    return reader.read(ref, ids), [0] * len(ids)


class _CodedReader:
    """``read`` and ``read_rows`` over one ``_read(ref, ids, codes)`` that fetches the
    vectors, and the codes too when asked, in a single round trip."""

    def _read(
        self, ref: FeatureRef, ids: Sequence[str], codes: bool
    ) -> tuple[list[np.ndarray | None], list[int]]:
        raise NotImplementedError

    def read(self, ref: FeatureRef, ids: Sequence[str]) -> list[np.ndarray | None]:
        return self._read(ref, ids, codes=False)[0]

    def read_rows(
        self, ref: FeatureRef, ids: Sequence[str]
    ) -> tuple[list[np.ndarray | None], list[int]]:
        """Vectors and codes (0 where none) in one read."""
        return self._read(ref, ids, codes=ref.code_feature is not None)


class StoreReader(_CodedReader):
    """Reads the online store in process through Feast's provider (no response building)."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)
        self.store = feature_store(self.repo)
        self._views: dict[str, Any] = {}

    def _view(self, name: str) -> Any:
        if name not in self._views:
            try:
                self._views[name] = self.store.get_feature_view(name)
            except Exception as exc:
                raise FeatureStoreError(
                    f"feature view {name!r} is not registered in {self.repo}: publish first"
                ) from exc
        return self._views[name]

    def _read(
        self, ref: FeatureRef, ids: Sequence[str], codes: bool
    ) -> tuple[list[np.ndarray | None], list[int]]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        view = self._view(ref.view)
        key = [ref.join_key]
        keys = [EntityKey(join_keys=key, entity_values=[Value(string_val=i)]) for i in ids]
        names = [ref.feature, ref.code_feature] if codes else [ref.feature]
        try:
            rows = self.store.provider.online_read(
                config=self.store.config,
                table=view,
                entity_keys=keys,
                requested_features=names,
            )
        except Exception as exc:
            raise FeatureStoreError(
                f"online read of {ref.view} failed in {self.repo}: {type(exc).__name__}: {exc}"
            ) from exc
        oldest = datetime.now(UTC) - view.ttl if view.ttl and view.ttl.total_seconds() else None
        out: list[np.ndarray | None] = []
        coded: list[int] = []
        for ts, values in rows:
            value = values.get(ref.feature) if values else None
            if value is None or (oldest is not None and ts is not None and ts < oldest):
                out.append(None)
                coded.append(0)
                continue
            out.append(np.asarray(value.float_list_val.val, dtype=np.float32))
            code = values.get(ref.code_feature) if codes else None
            has = code is not None and code.WhichOneof("val") == "int64_val"
            coded.append(code_value(code.int64_val) if has else 0)  # type: ignore[union-attr]
        return out, coded

    def revision(self, ref: FeatureRef) -> str:
        """A token that changes when the view is re-applied or re-materialized."""
        self.store.refresh_registry()
        self._views.pop(ref.view, None)
        view = self._view(ref.view)
        return f"{view.last_updated_timestamp}|{len(view.materialization_intervals)}|{view.tags}"


class HttpReader(_CodedReader):
    """Reads Feast's HTTP feature server (``feast serve``) at ``url``.

    Any failure (unreachable, an HTTP error, a reply that is not JSON or lacks a requested
    feature) is a :class:`~kar.errors.FeatureStoreError` naming the server (its password
    redacted) and what was wrong."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.shown_url = redact_url(self.url)
        self.timeout_s = timeout_s

    def _fail(self, what: str) -> FeatureStoreError:
        return FeatureStoreError(redact(f"feature server {self.shown_url}: {what}"))

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(
            f"{self.url}/get-online-features",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace").strip()
            raise self._fail(f"answered HTTP {exc.code}: {detail or exc.reason}") from None
        except urllib.error.URLError as exc:
            raise self._fail(f"unreachable ({exc.reason})") from None
        except TimeoutError:
            raise self._fail(f"no reply within {self.timeout_s:g}s") from None
        except Exception as exc:  # a malformed URL, a dropped connection, a bad status line
            raise self._fail(f"request failed ({type(exc).__name__}: {exc})") from None

    def _column(self, payload: Any, feature: str, n: int) -> tuple[list[Any], list[Any]]:
        """The values and statuses of ``feature`` in a reply for ``n`` entities."""
        try:
            names, results = payload["metadata"]["feature_names"], payload["results"]
        except (KeyError, TypeError, IndexError):
            names = results = None
        if not isinstance(names, list) or not isinstance(results, list):
            sent = json.dumps(payload)[:200]
            raise self._fail(f"unexpected reply (no metadata.feature_names and results): {sent}")
        if feature not in names:
            raise self._fail(f"reply has no feature {feature!r} (it has {names})")
        at = names.index(feature)
        column = results[at] if at < len(results) else None
        values = column.get("values") if isinstance(column, dict) else None
        statuses = column.get("statuses") if isinstance(column, dict) else None
        if not isinstance(values, list) or not isinstance(statuses, list):
            raise self._fail(f"reply for feature {feature!r} has no values/statuses lists")
        if len(values) != n or len(statuses) != n:
            raise self._fail(
                f"reply for feature {feature!r} has {len(values)} values and {len(statuses)} "
                f"statuses for {n} ids"
            )
        return values, statuses

    def _read(
        self, ref: FeatureRef, ids: Sequence[str], codes: bool
    ) -> tuple[list[np.ndarray | None], list[int]]:
        refs = [ref.ref] + ([f"{ref.view}:{ref.code_feature}"] if codes else [])
        body = json.dumps({"features": refs, "entities": {ref.join_key: list(ids)}})
        raw = self._post(body.encode())
        try:
            payload = json.loads(raw)
        except ValueError:
            snippet = raw[:120].decode("utf-8", "replace")
            raise self._fail(f"reply is not JSON: {snippet!r}") from None
        values, statuses = self._column(payload, ref.feature, len(ids))
        try:
            vectors = [
                np.asarray(v, dtype=np.float32) if s == "PRESENT" and v is not None else None
                for v, s in zip(values, statuses, strict=True)
            ]
        except (TypeError, ValueError) as exc:
            raise self._fail(f"feature {ref.feature!r} holds a non-numeric value ({exc})") from None
        if not codes:
            return vectors, [0] * len(vectors)
        assert ref.code_feature is not None
        found, found_statuses = self._column(payload, ref.code_feature, len(ids))
        coded = [
            code_value(c) if s == "PRESENT" and vec is not None else 0
            for c, s, vec in zip(found, found_statuses, vectors, strict=True)
        ]
        return vectors, coded

    def revision(self, ref: FeatureRef) -> str:
        return ""  # the server holds no registry handle here: rely on the cache TTL


class SdkReader(_CodedReader):
    """Reads through Feast's own ``FeatureStore.get_online_features`` (slower than
    :class:`StoreReader`: Feast builds the response; the reference path)."""

    def __init__(self, repo: Path) -> None:
        self.repo = Path(repo)
        self.store = feature_store(self.repo)

    def _read(
        self, ref: FeatureRef, ids: Sequence[str], codes: bool
    ) -> tuple[list[np.ndarray | None], list[int]]:
        names = [ref.feature, ref.code_feature] if codes else [ref.feature]
        try:
            response = self.store.get_online_features(
                features=[f"{ref.view}:{name}" for name in names],
                entity_rows=[{ref.join_key: str(i)} for i in ids],
            ).to_dict()
        except Exception as exc:
            raise FeatureStoreError(
                f"online read of {ref.view} failed in {self.repo}: {exc}"
            ) from exc
        vectors = [
            np.asarray(v, dtype=np.float32) if v is not None else None
            for v in response[ref.feature]
        ]
        if not codes:
            return vectors, [0] * len(vectors)
        coded = [
            code_value(c) if v is not None else 0
            for c, v in zip(response[ref.code_feature], vectors, strict=True)
        ]
        return vectors, coded

    def revision(self, ref: FeatureRef) -> str:
        return ""  # nothing is cached over this reader (see OnlineKnowledge)


class KnowledgeServer:
    """One user x N candidates -> :class:`KnowledgeBatch`, item vectors cached in process.

    ``user_feature`` / ``item_feature``: ``None`` for the built-in views, or a declared
    feature ``"name@version"`` (a model trained on version 1 keeps reading version 1).
    """

    def __init__(
        self,
        repo: Path,
        user_feature: str | None = None,
        item_feature: str | None = None,
        *,
        reader: Reader | None = None,
        item_cache_ttl_s: float = 300.0,
        version_check_s: float = 30.0,
    ) -> None:
        self.repo = Path(repo)
        self.user = resolve_feature(self.repo, "user", user_feature)
        self.item = resolve_feature(self.repo, "item", item_feature)
        self.reader: Reader = reader or StoreReader(self.repo)
        self.item_cache_ttl_s = item_cache_ttl_s
        self.version_check_s = version_check_s
        self.invalidate()

    def invalidate(self) -> None:
        """Drop the item cache (the next request re-reads the items it needs)."""
        self._index: dict[str, int] = {}
        self._matrix = np.zeros((1024, self.item.dim), dtype=np.float32)
        self._codes = np.zeros(1024, dtype=np.int64)
        self._filled_at = time.monotonic()
        self._checked_at = self._filled_at
        self._revision = self.reader.revision(self.item)

    def _maybe_invalidate(self) -> None:
        now = time.monotonic()
        if now - self._filled_at >= self.item_cache_ttl_s:
            self.invalidate()
        elif now - self._checked_at > self.version_check_s:
            self._checked_at = now
            if self.reader.revision(self.item) != self._revision:
                self.invalidate()

    def _cache(self, ids: list[str]) -> None:
        vectors, codes = read_rows(self.reader, self.item, ids)
        for item_id, vector, code in zip(ids, vectors, codes, strict=True):
            if vector is None or vector.shape != (self.item.dim,):
                continue  # not cached: a later refresh may add it
            row = len(self._index)
            if row == len(self._matrix):
                self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
                self._codes = np.concatenate([self._codes, np.zeros_like(self._codes)])
            self._matrix[row] = vector
            self._codes[row] = code
            self._index[item_id] = row

    def get(self, user_id: str, item_ids: Sequence[str]) -> KnowledgeBatch:
        """The user's vector (read now) and the candidates' (cached), in candidate order."""
        self._maybe_invalidate()
        index = self._index
        ids = [str(i) for i in item_ids]
        unseen = list(dict.fromkeys(i for i in ids if i not in index))
        if unseen:
            self._cache(unseen)
        rows = np.fromiter((index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        missing = rows < 0
        safe = np.where(missing, 0, rows)
        items = self._matrix[safe]
        items[missing] = 0.0
        codes = self._codes[safe]
        codes[missing] = 0
        (user,), (user_code,) = read_rows(self.reader, self.user, [str(user_id)])
        if user is None or user.shape != (self.user.dim,):
            empty = np.zeros(self.user.dim, np.float32)
            return KnowledgeBatch(empty, items, True, missing, 0, codes)
        return KnowledgeBatch(user, items, False, missing, int(user_code), codes)


class OnlineKnowledge(KnowledgeServer):
    """The built-in user and item views read through Feast's ``get_online_features`` on
    every request, nothing cached (a reference reader; :class:`KnowledgeServer` serves)."""

    def __init__(self, repo: Path) -> None:
        super().__init__(repo, reader=SdkReader(repo), item_cache_ttl_s=0.0)
