"""Knowledge adaptors: hybrid experts (KAR), mixture of experts, plain MLP.

Every adaptor maps raw user and item encodings to ``out_dim`` vectors:
``forward(user_raw, item_raw) -> (user_vec, item_vec)``; ``encode(kind, x)`` does one kind.
"""

from __future__ import annotations

import torch
from torch import nn

from kar.adaptor.config import AdaptorConfig
from kar.errors import ConfigError
from kar.models.layers import mlp

KINDS = ("user", "item")


class KnowledgeAdaptor(nn.Module):
    """Base class: one ``encode`` per knowledge kind.

    With ``config.standardize`` each kind's raw encodings are z-scored per dimension first,
    with a mean and std fitted on the training entities' vectors (:meth:`fit_input_scaler`)
    and saved with the weights (so ``kar refresh`` applies the same ones). Sentence encoders
    give unit-norm vectors whose dimensions each spread by about 0.02: unscaled, the
    adaptor barely moves off them in the epochs validation allows.
    """

    def __init__(self, config: AdaptorConfig, input_dim: int) -> None:
        super().__init__()
        self.config = config
        self.input_dim = input_dim
        self.out_dim = config.out_dim
        self.register_buffer("input_mean", torch.zeros(len(KINDS), input_dim))
        self.register_buffer("input_std", torch.ones(len(KINDS), input_dim))

    @torch.no_grad()
    def fit_input_scaler(self, user_raw: torch.Tensor, item_raw: torch.Tensor) -> None:
        """Fit the per-kind standardisation on these vectors (no-op unless ``standardize``)."""
        if not self.config.standardize:
            return
        for k, x in enumerate((user_raw, item_raw)):
            if len(x) > 1:
                self.input_mean[k] = x.mean(0)
                self.input_std[k] = x.std(0).clamp(min=1e-6)

    def encode(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """(B, input_dim) raw encodings of one kind -> (B, out_dim)."""
        k = KINDS.index(kind)
        return self._encode(kind, (x - self.input_mean[k]) / self.input_std[k])

    def _encode(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, user_raw: torch.Tensor, item_raw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode("user", user_raw), self.encode("item", item_raw)

    def _expert(self) -> nn.Module:
        c = self.config
        return mlp(self.input_dim, c.expert_hidden, c.out_dim, c.dropout)


class HybridExpertAdaptor(KnowledgeAdaptor):
    """Per kind, a softmax gate over shared experts + that kind's specific experts."""

    def __init__(self, config: AdaptorConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        n_experts = config.n_shared + config.n_specific
        self.shared = nn.ModuleList(self._expert() for _ in range(config.n_shared))
        self.specific = nn.ModuleDict(
            {k: nn.ModuleList(self._expert() for _ in range(config.n_specific)) for k in KINDS}
        )
        self.gates = nn.ModuleDict({k: nn.Linear(input_dim, n_experts) for k in KINDS})

    def gate(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """(batch, n_shared + n_specific) softmax weights; rows sum to 1."""
        return torch.softmax(self.gates[kind](x), dim=-1)

    def _encode(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        experts = [*self.shared, *self.specific[kind]]
        outs = torch.stack([e(x) for e in experts], dim=1)  # (B, E, out_dim)
        return (self.gate(kind, x).unsqueeze(-1) * outs).sum(dim=1)


class MoEAdaptor(HybridExpertAdaptor):
    """All experts shared by both kinds; a gate per kind (HEA with ``n_specific = 0``)."""


class MLPAdaptor(KnowledgeAdaptor):
    """One MLP per kind; no experts, no gate."""

    def __init__(self, config: AdaptorConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self.nets = nn.ModuleDict({k: self._expert() for k in KINDS})

    def _encode(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        return self.nets[kind](x)


class RawAdaptor(KnowledgeAdaptor):
    """No parameters: passes the raw encodings through (the "raw encodings" ablation)."""

    def __init__(self, config: AdaptorConfig, input_dim: int) -> None:
        super().__init__(config, input_dim)
        self.out_dim = input_dim

    def _encode(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        return x


ADAPTORS: dict[str, type[KnowledgeAdaptor]] = {
    "hea": HybridExpertAdaptor,
    "moe": MoEAdaptor,
    "mlp": MLPAdaptor,
    "raw": RawAdaptor,
}


def build_adaptor(config: AdaptorConfig, input_dim: int | None = None) -> KnowledgeAdaptor:
    """Instantiate the adaptor ``config.type`` for encodings of ``input_dim``."""
    dim = input_dim or config.input_dim
    if dim is None:
        raise ConfigError("adaptor input_dim unknown: give input_dim or set it in the config")
    if config.input_dim is not None and input_dim is not None and config.input_dim != input_dim:
        raise ConfigError(
            f"adaptor config expects input_dim {config.input_dim}, encodings have {input_dim}"
        )
    return ADAPTORS[config.type](config.model_copy(update={"input_dim": dim}), dim)
