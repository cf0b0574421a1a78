"""A trained adaptor as a folder (sentence-transformers style) that exports adapted vectors.

Folder layout (an artifact, :mod:`kar.artifacts`): ``manifest.json``, ``config.json``
(adaptor config, input dim, encoder id, backbone, seed),
``weights.safetensors``, ``metrics.json`` (the training run's metrics; from ``kar train``
also the gate's verdict, the validation AUCs with and without knowledge and the bootstrap
probability, :mod:`kar.adaptor.verdict`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import torch
from safetensors.torch import load_file, save_file

from kar.adaptor.config import AdaptorConfig
from kar.adaptor.experts import KnowledgeAdaptor, build_adaptor
from kar.artifacts import prepare_folder, read_manifest, write_manifest
from kar.errors import ConfigError, DataValidationError
from kar.project import ADAPTOR_CONFIG_FILE as CONFIG_FILE
from kar.project import ADAPTOR_METRICS_FILE as METRICS_FILE
from kar.project import ADAPTOR_WEIGHTS_FILE as WEIGHTS_FILE

VECTOR_SCHEMA = {"entity_id": pl.Utf8, "vector": pl.List(pl.Float32)}


@dataclass
class TrainedAdaptor:
    """An adaptor module plus its lineage; produces one vector per user and per item."""

    KIND: ClassVar[str] = "trained_adaptor"  # an artifact (kar.artifacts)
    config: AdaptorConfig
    module: KnowledgeAdaptor
    encoder: str | None = None
    backbone: str | None = None
    seed: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def gain_lineage(self) -> dict[str, str]:
        """Whether knowledge beat no knowledge on validation when this adaptor was trained
        (gate verdict, AUCs, bootstrap probability), as lineage strings
        (:func:`kar.adaptor.verdict.gain_lineage`)."""
        from kar.adaptor.verdict import gain_lineage

        return gain_lineage(self.metrics)

    @property
    def input_dim(self) -> int:
        return self.module.input_dim

    @property
    def out_dim(self) -> int:
        return self.module.out_dim

    def save(self, directory: str | Path) -> Path:
        """Write the folder; returns its path."""
        out = prepare_folder(directory)
        meta = {
            "adaptor": self.config.model_dump(),
            "input_dim": self.input_dim,
            "out_dim": self.out_dim,
            "encoder": self.encoder,
            "backbone": self.backbone,
            "seed": self.seed,
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        state = {k: v.detach().contiguous() for k, v in self.module.state_dict().items()}
        save_file(state, str(out / WEIGHTS_FILE))
        (out / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2, default=str), "utf-8")
        files = [CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE]
        write_manifest(out, self.KIND, 1, files=files, encoder=self.encoder, backbone=self.backbone)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> TrainedAdaptor:
        """Read a folder written by :meth:`save`."""
        path = Path(directory)
        read_manifest(path, cls.KIND, (CONFIG_FILE, WEIGHTS_FILE))
        try:
            meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
            config = AdaptorConfig.model_validate(meta["adaptor"])
            weights = load_file(str(path / WEIGHTS_FILE))
            if "input_mean" not in weights:  # saved before input standardisation: identity
                config = config.model_copy(update={"standardize": False})
            module = build_adaptor(config, int(meta["input_dim"]))
            module.load_state_dict({**module.state_dict(), **weights})
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"cannot load trained adaptor from {path}: {exc}") from exc
        metrics_path = path / METRICS_FILE
        metrics = json.loads(metrics_path.read_text("utf-8")) if metrics_path.is_file() else {}
        return cls(
            config=config,
            module=module,
            encoder=meta.get("encoder"),
            backbone=meta.get("backbone"),
            seed=meta.get("seed"),
            metrics=metrics,
        )

    @torch.no_grad()
    def transform(self, kind: str, vectors: pl.DataFrame, batch_size: int = 4096) -> pl.DataFrame:
        """Adapt one kind's (entity_id, vector) frame -> (entity_id, vector of out_dim)."""
        if kind not in ("user", "item"):
            raise ValueError(f"kind must be 'user' or 'item', not {kind!r}")
        for col in ("entity_id", "vector"):
            if col not in vectors.columns:
                raise DataValidationError(f"{kind} vectors frame has no column", field=col)
        if vectors.height == 0:
            return pl.DataFrame(schema=VECTOR_SCHEMA)
        vec = vectors["vector"]
        if isinstance(vec.dtype, pl.Array):
            vec = vec.arr.to_list()
        lengths = vec.list.len()
        bad = (lengths != self.input_dim).arg_true()
        if len(bad):
            row = int(bad[0])
            raise DataValidationError(
                f"{kind} vector of {vectors['entity_id'][row]!r} has {lengths[row]} values, "
                f"the adaptor expects {self.input_dim}",
                row=row + 1,
                field="vector",
            )
        x = torch.from_numpy(np.array(vec.list.to_array(self.input_dim).to_numpy(), np.float32))
        self.module.eval()
        out = torch.cat(
            [self.module.encode(kind, x[s : s + batch_size]) for s in range(0, len(x), batch_size)]
        ).numpy()
        return pl.DataFrame(
            {"entity_id": vectors["entity_id"].cast(pl.Utf8), "vector": list(out)},
            schema=VECTOR_SCHEMA,
        )

    def export(self, users: pl.DataFrame, items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """One adapted vector per user and per item (eval mode, no grad)."""
        return self.transform("user", users), self.transform("item", items)
