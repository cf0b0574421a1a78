"""Write user / item knowledge vectors (and optional discrete codes) for other CTR libraries.

- ``fuxictr``: ``user_knowledge.parquet`` / ``item_knowledge.parquet`` with a ``list<float32>``
  column per kind (join onto samples by id) + ``feature_config.yaml``, the ``feature_cols``
  entries (``type: embedding``, ``pretrain_dim``) to paste into a FuxiCTR dataset config.
- ``deepctr`` / ``rechub``: ``user_knowledge.npy`` (n + 1, d) float32 with row 0 all zeros
  for unknown ids, and ``user_index.json`` ({"id": row}); gather rows by id to feed a
  DeepCTR-Torch ``DenseFeat(name, d)`` or torch-rechub ``DenseFeature(name, embed_dim=d)``.
- ``recbole``: RecBole atomic files ``<dataset>.user`` / ``<dataset>.item`` (tab separated,
  ``user_id:token`` + ``user_knowledge:float_seq``, space-separated floats).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from kar.errors import ConfigError, DataValidationError
from kar.vectors import vector_matrix

FORMATS = ("fuxictr", "deepctr", "rechub", "recbole")
KINDS = ("user", "item")


def _check(frame: pl.DataFrame, kind: str) -> tuple[list[str], np.ndarray]:
    """(ids, (n, d) float32 matrix) of an (entity_id, vector) frame, validated."""
    return vector_matrix(frame, kind)


def _code_map(codes: pl.DataFrame | None) -> dict[str, int]:
    return {} if codes is None else dict(zip(codes["entity_id"], codes["code"], strict=True))


def _fuxictr(out: Path, kind: str, ids, matrix, codes: dict[str, int]) -> dict:
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


def _arrays(out: Path, kind: str, ids, matrix, codes: dict[str, int]) -> dict:
    name = f"{kind}_knowledge"
    padded = np.vstack([np.zeros((1, matrix.shape[1]), np.float32), matrix])
    np.save(out / f"{name}.npy", padded)
    index = {entity: row for row, entity in enumerate(ids, start=1)}
    (out / f"{kind}_index.json").write_text(json.dumps(index), encoding="utf-8")
    files = [f"{name}.npy", f"{kind}_index.json"]
    if codes:
        code_arr = np.array([0] + [codes.get(i, 0) for i in ids], dtype=np.int64)
        np.save(out / f"{name}_code.npy", code_arr)
        files.append(f"{name}_code.npy")
    return {"files": files, "dim": int(matrix.shape[1]), "rows": len(ids) + 1, "unknown_row": 0}


def _recbole(out: Path, kind: str, ids, matrix, codes: dict[str, int], dataset: str) -> dict:
    suffix = "user" if kind == "user" else "item"
    header = [f"{kind}_id:token", f"{kind}_knowledge:float_seq"]
    if codes:
        header.append(f"{kind}_knowledge_code:token")
    lines = ["\t".join(header)]
    for entity, row in zip(ids, matrix, strict=True):
        if any(c in entity for c in "\t\n"):
            raise DataValidationError(
                f"{kind} id {entity!r} contains a tab or newline", field="entity_id"
            )
        fields = [entity, " ".join(repr(float(v)) for v in row)]
        if codes:
            fields.append(str(codes.get(entity, 0)))
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
) -> dict:
    """Write (entity_id, vector) frames in ``fmt`` under ``out``; returns a manifest
    (also written as ``manifest.json``). ``dataset`` names RecBole's atomic files."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"format": fmt, "kinds": {}}
    for kind, frame, codes in (("user", users, user_codes), ("item", items, item_codes)):
        ids, matrix = _check(frame, kind)
        code_map = _code_map(codes)
        if fmt == "fuxictr":
            manifest["kinds"][kind] = _fuxictr(out, kind, ids, matrix, code_map)
        elif fmt == "recbole":
            manifest["kinds"][kind] = _recbole(out, kind, ids, matrix, code_map, dataset)
        else:
            manifest["kinds"][kind] = _arrays(out, kind, ids, matrix, code_map)
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


def export_project(
    project, fmt: str, out: str | Path | None = None, codebook_size: int = 0
) -> dict:
    """Export a project's adapted vectors (``artifacts/knowledge``), optionally with k-means
    codes (``codebook_size`` > 0); default folder ``artifacts/exports/<fmt>``."""
    paths = [project.knowledge_dir / f"{k}_knowledge.parquet" for k in KINDS]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"{missing[0]} not found: run `kar train` first")
    users, items = (pl.read_parquet(p) for p in paths)
    user_codes = item_codes = None
    if codebook_size:
        from kar.adaptor.codes import knowledge_codes

        user_codes, item_codes = knowledge_codes(users, items, codebook_size)
    out = Path(out) if out else project.artifacts / "exports" / fmt
    dataset = project.settings.name.replace("/", "_")
    return export_knowledge(
        users, items, fmt, out, user_codes=user_codes, item_codes=item_codes, dataset=dataset
    )
