"""Ablations of the knowledge path: which parts of KAR matter.

``ablate`` trains one backbone under each variant (same seeds, same split) beside the same
backbone without knowledge, and ``ablation_table`` reports mean ± std AUC / LogLoss and the
relative AUC gain over no knowledge. Groups (``ABLATIONS``):

- ``adaptor``: hybrid experts (``hea``) vs ``moe`` vs ``mlp`` vs ``raw`` encodings (no adaptor)
- ``kinds``: user reasoning only, item facts only, both
- ``experts``: number of shared / specific HEA experts
- ``pooling``: encoder pooling (needs the alternative encodings, ``encodings=``)
- ``codes``: adapted vectors + their k-means code as a categorical feature
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from kar.adaptor.config import AdaptorConfig
from kar.errors import ConfigError
from kar.models.inputs import CTRFeatures

ABLATIONS = ("adaptor", "kinds", "experts", "pooling", "codes")
EXPERT_GRID = ((1, 1), (2, 2), (4, 4), (4, 0))
ROW_SCHEMA = {
    "group": pl.Utf8,
    "variant": pl.Utf8,
    "seed": pl.Int64,
    "test_auc": pl.Float64,
    "test_logloss": pl.Float64,
    "valid_auc": pl.Float64,
    "seconds_per_epoch": pl.Float64,
}


def restrict_knowledge(features: CTRFeatures, kinds: str) -> CTRFeatures:
    """Keep only ``user`` or ``item`` knowledge (the other kind is marked missing everywhere)."""
    if kinds == "both":
        return features
    if kinds not in ("user", "item"):
        raise ConfigError(f"knowledge kinds must be user, item or both, not {kinds!r}")
    drop = "item" if kinds == "user" else "user"
    matrix = getattr(features, f"{drop}_knowledge")
    return dataclasses.replace(
        features,
        **{
            f"{drop}_knowledge": np.zeros_like(matrix),
            f"{drop}_missing": np.ones(len(matrix), dtype=np.float32),
        },
    )


def with_encodings(features: CTRFeatures, users: pl.DataFrame, items: pl.DataFrame) -> CTRFeatures:
    """The same samples with other raw knowledge encodings (e.g. another pooling)."""
    return features.with_knowledge(users, items)


@dataclass(frozen=True)
class Variant:
    """One ablation row: features transform + adaptor config (None: no knowledge)."""

    group: str
    name: str
    adaptor: AdaptorConfig | None
    features: Callable[[CTRFeatures], CTRFeatures] | None = None  # None: unchanged
    codebook_size: int = 0  # > 0: add k-means codes of the adapted vectors (trained first)


def default_variants(
    groups: Sequence[str] = ABLATIONS,
    base: AdaptorConfig | None = None,
    encodings: dict[str, tuple[pl.DataFrame, pl.DataFrame]] | None = None,
    codebook_size: int = 64,
) -> list[Variant]:
    """The variants of each group; ``base`` is the reference adaptor (default: hea)."""
    unknown = set(groups) - set(ABLATIONS)
    if unknown:
        raise ConfigError(f"unknown ablation group(s) {sorted(unknown)}; known: {ABLATIONS}")
    base = base or AdaptorConfig.load("hea")
    out = [Variant("reference", "no knowledge", None)]
    if "adaptor" in groups:
        for kind in ("hea", "moe", "mlp", "raw"):
            cfg = base if kind == base.type else AdaptorConfig.load(kind)
            out.append(Variant("adaptor", kind, cfg))
    if "kinds" in groups:
        for kinds in ("user", "item", "both"):
            label = {"user": "user reasoning only", "item": "item facts only"}.get(kinds, "both")
            keep = None if kinds == "both" else (lambda f, k=kinds: restrict_knowledge(f, k))
            out.append(Variant("kinds", label, base, keep))
    if "experts" in groups:
        for shared, specific in EXPERT_GRID:
            cfg = base.model_copy(
                update={"type": "hea", "n_shared": shared, "n_specific": specific}
            )
            out.append(Variant("experts", f"{shared} shared + {specific} specific", cfg))
    if "pooling" in groups:
        for pooling, (users, items) in (encodings or {}).items():
            out.append(
                Variant(
                    "pooling", pooling, base, lambda f, u=users, i=items: with_encodings(f, u, i)
                )
            )
    if "codes" in groups:
        out.append(
            Variant(
                "codes", f"vectors + codes (k={codebook_size})", base, codebook_size=codebook_size
            )
        )
    return out


def _key(v: Variant) -> str | None:
    """Variants that train the same thing (e.g. ``hea`` and ``both``) share one run."""
    if v.features is not None or v.codebook_size:
        return None
    return repr(v.adaptor.model_dump()) if v.adaptor else "none"


def ablate(
    features: CTRFeatures,
    backbone: str = "deepfm",
    variants: Sequence[Variant] | None = None,
    seeds: Sequence[int] = (0,),
    model_config: dict | None = None,
    progress: bool = False,
) -> pl.DataFrame:
    """Train ``backbone`` under every variant and seed; one row per (variant, seed)."""
    from kar.adaptor.codes import knowledge_codes, with_codes
    from kar.models.train import train_ctr

    if not features.has_knowledge:
        raise ConfigError("ablations need features built with knowledge_users / knowledge_items")
    variants = list(variants) if variants is not None else default_variants()
    plain = features.without_knowledge()
    rows = []
    for seed in seeds:
        done: dict[str, dict] = {}
        for v in variants:
            key = _key(v)
            if key is not None and key in done:
                rows.append({**done[key], "group": v.group, "variant": v.name})
                continue
            feats = plain if v.adaptor is None else v.features(features) if v.features else features
            if v.codebook_size:
                first = train_ctr(feats, backbone, model_config, v.adaptor, seed=seed)
                vectors = first.trained_adaptor()
                ids_u = feats.knowledge_users["user_id"].to_list()  # knowledge rows 1..n
                ids_i = feats.knowledge_items["item_id"].to_list()
                users, items = _adapted(vectors, feats, ids_u, ids_i)
                u_codes, i_codes = knowledge_codes(users, items, v.codebook_size, seed)
                feats = with_codes(feats, u_codes, i_codes, v.codebook_size)
            result = train_ctr(
                feats, backbone, model_config, v.adaptor, seed=seed, progress=progress
            )
            row = {
                "group": v.group,
                "variant": v.name,
                "seed": seed,
                "test_auc": result.test_auc,
                "test_logloss": result.test_logloss,
                "valid_auc": result.valid_auc,
                "seconds_per_epoch": result.seconds_per_epoch,
            }
            rows.append(row)
            if key is not None:
                done[key] = row
    return pl.DataFrame(rows, schema=ROW_SCHEMA)


def _adapted(trained, features: CTRFeatures, user_ids: list[str], item_ids: list[str]):
    """Adapted vectors of the entities with knowledge, from the feature matrices (row = idx)."""
    out = []
    for kind, ids in (("user", user_ids), ("item", item_ids)):
        matrix = getattr(features, f"{kind}_knowledge")[1:]
        keep = getattr(features, f"{kind}_missing")[1:] == 0
        raw = pl.DataFrame(
            {
                "entity_id": [i for i, k in zip(ids, keep, strict=True) if k],
                "vector": list(matrix[keep]),
            },
            schema={"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)},
        )
        out.append(trained.transform(kind, raw))
    return out


def ablation_table(rows: pl.DataFrame) -> pl.DataFrame:
    """Mean ± std per (group, variant) and the relative AUC gain over no knowledge."""
    summary = rows.group_by("group", "variant", maintain_order=True).agg(
        pl.col("test_auc").mean().alias("auc_mean"),
        pl.col("test_auc").std().fill_null(0.0).alias("auc_std"),
        pl.col("test_logloss").mean().alias("logloss_mean"),
        pl.col("test_logloss").std().fill_null(0.0).alias("logloss_std"),
        pl.col("seconds_per_epoch").mean().alias("seconds_per_epoch"),
        pl.col("seed").n_unique().alias("n_seeds"),
    )
    ref = summary.filter(pl.col("group") == "reference")["auc_mean"]
    ref_auc = float(ref[0]) if len(ref) else float("nan")
    return summary.with_columns((pl.col("auc_mean") / ref_auc - 1.0).alias("rel_auc_gain"))


def ablation_markdown(table: pl.DataFrame) -> str:
    """The ablation table as markdown."""
    lines = [
        "| group | variant | AUC mean ± std | LogLoss mean ± std | rel. AUC gain vs no knowledge "
        "| s/epoch | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.iter_rows(named=True):
        lines.append(
            f"| {r['group']} | {r['variant']} | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} "
            f"| {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} | {100 * r['rel_auc_gain']:+.2f}% "
            f"| {r['seconds_per_epoch']:.2f} | {r['n_seeds']} |"
        )
    return "\n".join(lines)
