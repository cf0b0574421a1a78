"""Model configurations (pydantic), FuxiCTR style: shared base fields + per-model extras."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """Fields every backbone shares: embedding size, deep tower, optimiser, early stopping."""

    model_config = ConfigDict(extra="forbid")

    embedding_dim: int = Field(16, ge=1)  # size of every id / attribute embedding
    mlp_hidden: list[int] = Field(default_factory=lambda: [128, 64])  # deep tower layers
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # in the deep tower
    lr: float = Field(1e-3, gt=0.0)  # Adam learning rate
    weight_decay: float = Field(0.0, ge=0.0)  # Adam weight decay of the other weights
    batch_size: int = Field(1024, ge=1)  # training rows per step
    max_epochs: int = Field(20, ge=1)  # most passes over the training rows
    patience: int = Field(2, ge=1)  # epochs without a better validation AUC before stopping
    # regularisation a practitioner sets: L2 on the embedding tables (Adam weight decay on
    # them only) and an exponential learning-rate decay per epoch (1.0: constant)
    embedding_weight_decay: float = Field(0.03, ge=0.0)
    lr_decay: float = Field(0.8, gt=0.0, le=1.0)  # learning rate x this per epoch
    # knowledge: each training row's knowledge dropped with this probability; weight decay
    # on the adaptor and the knowledge projections (pulls useless knowledge towards closed)
    knowledge_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    knowledge_weight_decay: float = Field(0.0, ge=0.0)  # on adaptor + projections
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

    attention_hidden: list[int] = Field(default_factory=lambda: [64, 32])  # activation unit


class DCNv2Config(ModelConfig):
    """DCN-V2: full-rank cross layers beside the deep tower (parallel structure)."""

    cross_layers: int = Field(3, ge=1)  # cross network depth


class AutoIntConfig(ModelConfig):
    """AutoInt: multi-head self-attention over field embeddings, residual connections."""

    attention_layers: int = Field(2, ge=1)  # self-attention layers
    heads: int = Field(2, ge=1)  # attention heads per layer
    attention_dim: int = Field(16, ge=1)  # per head


class XDeepFMConfig(ModelConfig):
    """xDeepFM: a compressed interaction network (CIN) beside the deep tower."""

    cin_layers: list[int] = Field(default_factory=lambda: [32, 32])  # CIN feature maps


class FiBiNetConfig(ModelConfig):
    """FiBiNET: SENET field re-weighting + bilinear interactions, then the deep tower."""

    reduction_ratio: int = Field(3, ge=1)  # SENET squeeze ratio
    # bilinear weights: one shared, one per field, or one per field pair
    bilinear_type: str = Field("field_all", pattern="^(field_all|field_each|field_interaction)$")


class DIENConfig(ModelConfig):
    """DIEN: a GRU interest extractor (with the auxiliary next-click loss) and an AUGRU evolver."""

    gru_hidden: int | None = Field(None, ge=1)  # None: embedding_dim
    attention_hidden: list[int] = Field(default_factory=lambda: [64, 32])  # AUGRU attention
    # weight of the auxiliary next-click loss on the extractor's hidden states (paper: 1.0);
    # 0 disables it
    aux_weight: float = Field(1.0, ge=0.0)
    aux_hidden: list[int] = Field(default_factory=lambda: [100, 50])  # the paper's aux net
