"""KAR's joint path: the hybrid-expert adaptor as an ``nn.Module`` inside your own CTR model.

The frozen path reads kar's published 32-d vectors from Feast as dense inputs. The joint
path (KAR's own design) reads the *raw* encodings instead (a Feast view, or the project's
``artifacts/encoded``) and trains the adaptor together with your model, on your CTR loss::

    from kar.adaptor import KnowledgeInput, build_module, load_module, vector_table

    adaptor = load_module("my-project/artifacts/adaptor")      # trained by `kar train`
    adaptor = build_module("hea", input_dim=384)                # or fresh from experts/*.yaml
    user_rows, user_table = vector_table(frame["user_id"], frame["user_raw_encoding"])
    item_rows, item_table = vector_table(frame["item_id"], frame["item_raw_encoding"])
    knowledge = KnowledgeInput(user_table, item_table, adaptor)  # an nn.Module
    dense = torch.cat([counters, knowledge(user_rows[batch], item_rows[batch])], dim=1)

``KnowledgeInput`` without an adaptor passes fixed vectors through (the frozen path), so
one model class serves both. docs/consumers.md walks through it; examples/joint_deepctr.py
does it with DeepCTR-Torch's DeepFM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from kar.adaptor.config import AdaptorConfig
from kar.adaptor.experts import KnowledgeAdaptor, build_adaptor
from kar.errors import ConfigError


def load_module(path: str | Path, *, trainable: bool = True) -> KnowledgeAdaptor:
    """The adaptor saved in ``path`` (``kar train``'s ``artifacts/adaptor``) as an
    ``nn.Module``, its parameters trainable (``trainable=False``: frozen, eval mode)."""
    from kar.adaptor.trained import TrainedAdaptor

    module = TrainedAdaptor.load(path).module
    for param in module.parameters():
        param.requires_grad_(trainable)
    module.train(trainable)
    return module


def build_module(
    config: AdaptorConfig | str | Path = "hea",
    input_dim: int | None = None,
    *,
    fit_on: tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor] | None = None,
) -> KnowledgeAdaptor:
    """A fresh adaptor from a config (an ``AdaptorConfig``, a bundled name such as ``hea``,
    or an experts/*.yaml path) for encodings of ``input_dim``.

    ``fit_on``: (user, item) raw encodings the input standardisation is fitted on (used
    only when the config has ``standardize: true``; fit it on the training entities).
    """
    if not isinstance(config, AdaptorConfig):
        config = AdaptorConfig.load(config)
    module = build_adaptor(config, input_dim)
    if fit_on is not None:
        user, item = (torch.tensor(np.asarray(x, dtype=np.float32)) for x in fit_on)
        module.fit_input_scaler(user, item)
    return module


def vector_table(ids: pl.Series, vectors: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A Feast training set's vector column as (rows, table): ``table[rows[r]]`` is row r's
    vector, ``rows[r]`` is -1 where Feast returned none (null). Each distinct (entity id,
    vector) pair is stored once, so a 100k-row training set of 384-d encodings holds one
    row per entity (and per version), not one per sample."""
    if ids.len() != vectors.len():
        raise ConfigError(f"{ids.len()} ids but {vectors.len()} vectors")
    if isinstance(vectors.dtype, pl.Array):
        vectors = vectors.arr.to_list()
    if not isinstance(vectors.dtype, pl.List):
        raise ConfigError(f"column {vectors.name!r} must hold vectors (lists), not {vectors.dtype}")
    frame = pl.DataFrame({"id": ids.cast(pl.Utf8).fill_null(""), "vector": vectors})
    key = pl.concat_str([pl.col("id"), pl.col("vector").hash().cast(pl.Utf8)], separator="|")
    codes = frame.select(
        pl.when(pl.col("vector").is_not_null()).then(key).rank("dense").alias("code")
    )["code"]
    rows = np.array((codes.cast(pl.Int64) - 1).fill_null(-1).to_numpy())  # writable
    present = np.flatnonzero(rows >= 0)
    if len(present) == 0:
        return rows, np.zeros((0, 0), dtype=np.float32)
    _, first = np.unique(rows[present], return_index=True)  # codes are 0..m-1, dense
    first = present[first]
    picked = vectors.gather(first)
    dim = int(picked.list.len()[0])
    table = np.array(picked.list.to_array(dim).to_numpy(), dtype=np.float32)  # a writable copy
    return rows, table


class KnowledgeInput(nn.Module):
    """User and item knowledge of a batch as one dense input ``(B, 2 * out_dim)``.

    ``user_table`` / ``item_table``: each kind's vectors (see :func:`vector_table`), kept as
    buffers. ``adaptor``: None passes them through as they are (published, frozen vectors);
    a :class:`KnowledgeAdaptor` adapts them (raw encodings), trained by whatever loss the
    surrounding model is trained on: KAR's joint path. Rows -1 (no knowledge) give zeros.
    """

    def __init__(
        self,
        user_table: np.ndarray | torch.Tensor,
        item_table: np.ndarray | torch.Tensor,
        adaptor: KnowledgeAdaptor | None = None,
    ) -> None:
        super().__init__()
        user = torch.tensor(np.asarray(user_table, dtype=np.float32))
        item = torch.tensor(np.asarray(item_table, dtype=np.float32))
        if adaptor is not None and {user.shape[1], item.shape[1]} != {adaptor.input_dim}:
            raise ConfigError(
                f"the adaptor expects {adaptor.input_dim}-dim encodings, the tables hold "
                f"{user.shape[1]} (user) and {item.shape[1]} (item)"
            )
        self.register_buffer("user_table", user, persistent=False)
        self.register_buffer("item_table", item, persistent=False)
        self.adaptor = adaptor
        dims = (adaptor.out_dim,) * 2 if adaptor is not None else (user.shape[1], item.shape[1])
        self.out_dim = int(sum(dims))

    def _side(self, kind: str, table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        present = rows >= 0
        x = table[rows.clamp(min=0)]
        if self.adaptor is not None:
            x = self.adaptor.encode(kind, x)
        return x * present.unsqueeze(-1).to(x.dtype)

    def forward(self, user_rows: torch.Tensor, item_rows: torch.Tensor) -> torch.Tensor:
        """(B,) int64 rows into the user / item tables -> (B, out_dim) float32."""
        user = self._side("user", self.user_table, user_rows)
        item = self._side("item", self.item_table, item_rows)
        return torch.cat([user, item], dim=-1)
