"""Write user / item knowledge vectors (and optional discrete codes) for other CTR libraries.

- ``fuxictr``: ``user_knowledge.parquet`` / ``item_knowledge.parquet`` with a ``list<float32>``
  column per kind (join onto samples by id) + ``feature_config.yaml``, the ``feature_cols``
  entries (``type: embedding``, ``pretrain_dim``) to paste into a FuxiCTR dataset config.
- ``deepctr`` / ``rechub``: ``user_knowledge.npy`` (n + 1, d) float32 with row 0 all zeros
  for unknown ids, and ``user_index.json`` ({"id": row}); gather rows by id to feed a
  DeepCTR-Torch ``DenseFeat(name, d)`` or torch-rechub ``DenseFeature(name, embed_dim=d)``.
- ``recbole``: RecBole atomic files ``<dataset>.user`` / ``<dataset>.item`` (tab separated,
  ``user_id:token`` + ``user_knowledge:float_seq``, space-separated floats).

Given the dataset's entity ids (``user_ids`` / ``item_ids``; :func:`export_project` always
passes them), every entity gets a row: zeros and ``<kind>_knowledge_missing`` = 1 where it
has no knowledge, as the online reader returns.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from kar.errors import ConfigError, DataValidationError, KarError
from kar.vectors import vector_matrix

log = logging.getLogger(__name__)
FORMATS = ("fuxictr", "deepctr", "rechub", "recbole")
KINDS = ("user", "item")


def _check(frame: pl.DataFrame, kind: str, dim: int | None) -> tuple[list[str], np.ndarray]:
    """(ids, (n, d) float32 matrix) of an (entity_id, vector) frame, validated; an empty
    frame is a kind without knowledge (``dim`` columns, from the other kind)."""
    if frame.height == 0 and not dim:
        raise DataValidationError(f"{kind} knowledge frame is empty", field="vector")
    return vector_matrix(frame, kind, dim=dim if frame.height == 0 else None, allow_empty=True)


def _complete(
    ids: list[str], matrix: np.ndarray, every: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Every id of ``every`` (then the other ids with a vector): zeros and missing = 1 where
    there is no vector. ``every`` None: the rows as given, no missing flag."""
    if every is None:
        return ids, matrix, None
    position = {entity: row for row, entity in enumerate(ids)}
    order = list(dict.fromkeys([*(str(e) for e in every), *ids]))
    rows = np.array([position.get(e, -1) for e in order], dtype=np.int64)
    missing = (rows < 0).astype(np.int8)
    out = np.zeros((len(order), matrix.shape[1]), dtype=np.float32)
    out[rows >= 0] = matrix[rows[rows >= 0]]
    return order, out, missing


def _code_map(codes: pl.DataFrame | None) -> dict[str, int]:
    return {} if codes is None else dict(zip(codes["entity_id"], codes["code"], strict=True))


def _fuxictr(out: Path, kind: str, ids, matrix, codes: dict[str, int], missing) -> dict:
    name = f"{kind}_knowledge"
    frame = pl.DataFrame(
        {f"{kind}_id": ids, name: list(matrix)},
        schema={f"{kind}_id": pl.Utf8, name: pl.List(pl.Float32)},
    )
    cols = [
        {
            "name": name,
            "active": True,
            "dtype": "float",
            "type": "embedding",
            "source": kind,
            "pretrain_dim": int(matrix.shape[1]),
            "embedding_dim": int(matrix.shape[1]),
        }
    ]
    if missing is not None:
        frame = frame.with_columns(pl.Series(f"{name}_missing", missing, dtype=pl.Int8))
        cols.append({"name": f"{name}_missing", "active": True, "dtype": "float",
                     "type": "numeric", "source": kind})  # fmt: skip
    if codes:
        frame = frame.with_columns(
            pl.Series(f"{name}_code", [codes.get(i, 0) for i in ids], dtype=pl.Int64)
        )
        cols.append(
            {
                "name": f"{name}_code",
                "active": True,
                "dtype": "int",
                "type": "categorical",
                "source": kind,
            }
        )
    frame.write_parquet(out / f"{name}.parquet")
    return {"files": [f"{name}.parquet"], "feature_cols": cols}


def _arrays(out: Path, kind: str, ids, matrix, codes: dict[str, int], missing) -> dict:
    name = f"{kind}_knowledge"
    padded = np.vstack([np.zeros((1, matrix.shape[1]), np.float32), matrix])
    np.save(out / f"{name}.npy", padded)
    index = {entity: row for row, entity in enumerate(ids, start=1)}
    (out / f"{kind}_index.json").write_text(json.dumps(index), encoding="utf-8")
    files = [f"{name}.npy", f"{kind}_index.json"]
    if missing is not None:  # row 0 (an unknown id) is missing too
        np.save(out / f"{name}_missing.npy", np.concatenate([[1], missing]).astype(np.int8))
        files.append(f"{name}_missing.npy")
    if codes:
        code_arr = np.array([0] + [codes.get(i, 0) for i in ids], dtype=np.int64)
        np.save(out / f"{name}_code.npy", code_arr)
        files.append(f"{name}_code.npy")
    return {"files": files, "dim": int(matrix.shape[1]), "rows": len(ids) + 1, "unknown_row": 0}


def _recbole(
    out: Path, kind: str, ids, matrix, codes: dict[str, int], missing, dataset: str
) -> dict:
    suffix = "user" if kind == "user" else "item"
    header = [f"{kind}_id:token", f"{kind}_knowledge:float_seq"]
    if codes:
        header.append(f"{kind}_knowledge_code:token")
    if missing is not None:
        header.append(f"{kind}_knowledge_missing:float")
    lines = ["\t".join(header)]
    for n, (entity, row) in enumerate(zip(ids, matrix, strict=True)):
        if any(c in entity for c in "\t\n"):
            raise DataValidationError(
                f"{kind} id {entity!r} contains a tab or newline", field="entity_id"
            )
        fields = [entity, " ".join(repr(float(v)) for v in row)]
        if codes:
            fields.append(str(codes.get(entity, 0)))
        if missing is not None:
            fields.append(str(int(missing[n])))
        lines.append("\t".join(fields))
    path = out / f"{dataset}.{suffix}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"files": [path.name], "dim": int(matrix.shape[1])}


def export_knowledge(
    users: pl.DataFrame,
    items: pl.DataFrame,
    fmt: str,
    out: str | Path,
    *,
    user_codes: pl.DataFrame | None = None,
    item_codes: pl.DataFrame | None = None,
    dataset: str = "kar",
    user_ids: Sequence[str] | None = None,
    item_ids: Sequence[str] | None = None,
) -> dict:
    """Write (entity_id, vector) frames in ``fmt`` under ``out``; returns a manifest
    (also written as ``manifest.json``). ``dataset`` names RecBole's atomic files.
    ``user_ids`` / ``item_ids``: every entity of the dataset, each written (zeros and
    ``<kind>_knowledge_missing`` = 1 without knowledge); one kind's frame may be empty."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"format": fmt, "kinds": {}}
    dim = next((len(f["vector"][0]) for f in (users, items) if f.height), None)
    sides = (("user", users, user_codes, user_ids), ("item", items, item_codes, item_ids))
    for kind, frame, codes, every in sides:
        ids, matrix, missing = _complete(*_check(frame, kind, dim), every)
        code_map = _code_map(codes)
        if fmt == "fuxictr":
            info = _fuxictr(out, kind, ids, matrix, code_map, missing)
        elif fmt == "recbole":
            info = _recbole(out, kind, ids, matrix, code_map, missing, dataset)
        else:
            info = _arrays(out, kind, ids, matrix, code_map, missing)
        info["entities"] = len(ids)
        info["missing"] = int(missing.sum()) if missing is not None else 0
        manifest["kinds"][kind] = info
    if fmt == "fuxictr":
        import yaml

        cols = [c for k in KINDS for c in manifest["kinds"][k].pop("feature_cols")]
        snippet = yaml.safe_dump({"feature_cols": cols}, sort_keys=False)
        (out / "feature_config.yaml").write_text(
            "# Add these to feature_cols of your FuxiCTR dataset config; join\n"
            "# user_knowledge.parquet / item_knowledge.parquet onto your samples by\n"
            "# user_id / item_id first.\n" + snippet,
            encoding="utf-8",
        )
        manifest["feature_config"] = "feature_config.yaml"
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest


def project_codes(
    project, users: pl.DataFrame, items: pl.DataFrame, codebook_size: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(user codes, item codes) of a project's adapted vectors: from the codebook ``kar
    publish`` saved (``artifacts/knowledge/<CODEBOOK_FILE>``), so they are the codes Feast
    serves; without one, fitted as publish would fit it (``codebook_size``, the training seed)
    and not saved. A saved codebook of another size is a :class:`ConfigError`."""
    from kar.adaptor.codes import KnowledgeCodebooks

    if not all(f.height for f in (users, items)):
        raise ConfigError("knowledge codes need vectors of both kinds; export without --codes")
    path = project.codebook_path
    if path.is_file():
        books = KnowledgeCodebooks.load(path)
        if books.size != codebook_size:
            raise ConfigError(
                f"--codes {codebook_size}: the published codebook ({path}) has size "
                f"{books.size}; export with --codes {books.size} (the codes Feast serves)"
            )
    else:
        log.warning("no published codebook at %s: fitting one (not saved)", path)
        seed = project.settings.training.seed
        books = KnowledgeCodebooks.fit(users, items, codebook_size, seed)
    user_codes, item_codes = (
        books.with_codes(kind, frame).select("entity_id", "code")
        for kind, frame in zip(KINDS, (users, items), strict=True)
    )
    return user_codes, item_codes


def export_project(
    project, fmt: str, out: str | Path | None = None, codebook_size: int = 0
) -> dict:
    """Export a project's adapted vectors (``artifacts/knowledge``) for every user and item
    of its dataset (zeros + a missing flag without knowledge), optionally with the knowledge
    codes (``codebook_size`` > 0; the published codebook's, :func:`project_codes`); default
    folder ``artifacts/exports/<fmt>``."""
    from kar.pipeline import load_data

    paths = [project.knowledge_path(k) for k in KINDS]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"{missing[0]} not found: run `kar train` first")
    users, items = (pl.read_parquet(p) for p in paths)
    user_codes = item_codes = None
    if codebook_size:
        user_codes, item_codes = project_codes(project, users, items, codebook_size)
    out = Path(out) if out else project.exports_dir / fmt
    dataset = project.settings.name.replace("/", "_")
    user_ids = item_ids = None
    try:
        frames, _ = load_data(project)
        user_ids, item_ids = frames.users["user_id"].to_list(), frames.items["item_id"].to_list()
    except KarError as exc:  # vectors without their dataset: export what there is
        log.warning("%s; exporting only the entities with knowledge", exc)
    return export_knowledge(
        users, items, fmt, out, user_codes=user_codes, item_codes=item_codes, dataset=dataset,
        user_ids=user_ids, item_ids=item_ids,
    )  # fmt: skip
