"""Model configurations (pydantic), FuxiCTR style: shared base fields + per-model extras."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """Fields every backbone shares: embedding size, deep tower, optimiser, early stopping."""

    model_config = ConfigDict(extra="forbid")

    embedding_dim: int = Field(16, ge=1)
    mlp_hidden: list[int] = Field(default_factory=lambda: [128, 64])
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(1024, ge=1)
    max_epochs: int = Field(20, ge=1)
    patience: int = Field(2, ge=1)  # epochs without a better validation AUC before stopping
    # regularisation a practitioner sets: L2 on the embedding tables (Adam weight decay on
    # them only) and an exponential learning-rate decay per epoch (1.0: constant)
    embedding_weight_decay: float = Field(0.03, ge=0.0)
    lr_decay: float = Field(0.8, gt=0.0, le=1.0)
    # knowledge: each training row's knowledge dropped with this probability; weight decay
    # on the adaptor and the knowledge projections (pulls useless knowledge towards closed)
    knowledge_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    knowledge_weight_decay: float = Field(0.0, ge=0.0)
    # the knowledge parameters' learning rate, as a multiple of lr (they start at zero)
    knowledge_lr_scale: float = Field(1.0, gt=0.0)
    # a gate that can close: given the model without knowledge to fall back to, the
    # knowledge model is kept only if a paired bootstrap of the validation rows gives it
    # the higher AUC with at least this probability (0: always kept)
    knowledge_gate: float = Field(0.9, ge=0.0, le=1.0)


class DeepFMConfig(ModelConfig):
    """DeepFM: FM over field embeddings (knowledge vectors are fields too) + a deep tower."""


class DINConfig(ModelConfig):
    """DIN: attention over the behaviour sequence w.r.t. the target item."""

    attention_hidden: list[int] = Field(default_factory=lambda: [64, 32])


class DCNv2Config(ModelConfig):
    """DCN-V2: full-rank cross layers beside the deep tower (parallel structure)."""

    cross_layers: int = Field(3, ge=1)


class AutoIntConfig(ModelConfig):
    """AutoInt: multi-head self-attention over field embeddings, residual connections."""

    attention_layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    attention_dim: int = Field(16, ge=1)  # per head


class XDeepFMConfig(ModelConfig):
    """xDeepFM: a compressed interaction network (CIN) beside the deep tower."""

    cin_layers: list[int] = Field(default_factory=lambda: [32, 32])


class FiBiNetConfig(ModelConfig):
    """FiBiNET: SENET field re-weighting + bilinear interactions, then the deep tower."""

    reduction_ratio: int = Field(3, ge=1)
    bilinear_type: str = Field("field_all", pattern="^(field_all|field_each|field_interaction)$")


class DIENConfig(ModelConfig):
    """DIEN: a GRU interest extractor (with the auxiliary next-click loss) and an AUGRU evolver."""

    gru_hidden: int | None = Field(None, ge=1)  # None: embedding_dim
    attention_hidden: list[int] = Field(default_factory=lambda: [64, 32])
    # weight of the auxiliary next-click loss on the extractor's hidden states (paper: 1.0);
    # 0 disables it
    aux_weight: float = Field(1.0, ge=0.0)
    aux_hidden: list[int] = Field(default_factory=lambda: [100, 50])  # the paper's aux net
