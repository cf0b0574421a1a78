"""How speculative decoding drafts and accepts (:class:`SpeculativeConfig`), and what it
did (:class:`SpeculativeStats`, the speculative report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kar.errors import ConfigError

if TYPE_CHECKING:
    from kar.project import SpeculativeSettings

Mode = Literal["exact", "relaxed"]


@dataclass(frozen=True)
class SpeculativeConfig:
    """How drafts are made and accepted."""

    mode: Mode = "exact"
    # most draft tokens checked per step (with draft_tree: nodes). 5 makes the widest pass
    # 6 tokens: on this CPU (float32, kar's kernels) passes of 4-6 tokens cost ~0.9x a
    # one-token step and 7 or more ~1.1-1.5x, so a sixth node costs more than it keeps
    draft_tokens: int = 5
    top_k: int = 3  # relaxed: besides the greedy choice, a draft token among the top_k ...
    min_prob: float = 0.1  # ... with at least this probability is kept
    prompt_lookup: bool = True  # also draft from the conversation's own prompt/answer
    # draft_tokens may go to several continuations at once (a tree, checked in one pass
    # with a tree attention mask) where earlier answers went different ways
    draft_tree: bool = True
    # tokens (rows x (1 + draft)) one verification pass may hold: big batches get shorter
    # drafts, since a wide pass over many rows costs more than the tokens it saves; a batch
    # the budget leaves no draft token (rows > budget / 2) is decoded plainly (like vLLM's
    # disable_by_batch_size). 16 suits a CPU, where a 16-token pass is compute-bound
    step_token_budget: int = 16
    # past its first token a draft (or tree node) needs this many earlier answers to agree
    # (2 suited PyTorch's default kernels, where a wider pass cost ~1.5-2x a step)
    min_support: int = 1
    min_share: float = 0.5  # chain drafts: stop where less than this share of matches agree
    min_n: int = 2  # shortest suffix (tokens) matched for a draft
    max_n: int = 4  # longest suffix tried first

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "relaxed"):
            raise ConfigError(f"speculative mode must be 'exact' or 'relaxed', got {self.mode!r}")
        if self.step_token_budget < 1:
            raise ConfigError(f"step_token_budget must be >= 1, got {self.step_token_budget}")
        if self.draft_tokens < 1:
            raise ConfigError(f"draft_tokens must be >= 1, got {self.draft_tokens}")
        if self.top_k < 1 or not 0.0 <= self.min_prob <= 1.0:
            raise ConfigError(
                f"need top_k >= 1 and 0 <= min_prob <= 1, got {self.top_k}, {self.min_prob}"
            )
        if self.min_support < 1:
            raise ConfigError(f"need min_support >= 1, got {self.min_support}")
        if not 1 <= self.min_n <= self.max_n:
            raise ConfigError(f"need 1 <= min_n <= max_n, got {self.min_n}, {self.max_n}")

    @classmethod
    def from_settings(cls, spec: SpeculativeSettings) -> SpeculativeConfig:
        """The config of kar.yaml's ``generation.speculative`` section."""
        return cls(
            mode=spec.mode,  # type: ignore[arg-type]  # "off" never gets here
            draft_tokens=spec.draft_tokens,
            draft_tree=spec.draft_tree,
            min_support=spec.min_support,
            top_k=spec.top_k,
            min_prob=spec.min_prob,
            step_token_budget=spec.step_token_budget,
        )

    def drafts_per_row(self, rows: int) -> int:
        """Most draft tokens per row in a batch of ``rows`` (0: the batch decodes plainly)."""
        return min(self.draft_tokens, max(0, self.step_token_budget // rows - 1))

    def tag(self) -> str:
        """Suffix of ``model_name`` for relaxed mode (its output differs from greedy)."""
        return f"+spec-relaxed(k={self.top_k},p={self.min_prob:g})"


@dataclass
class SpeculativeStats:
    """Running totals over every ``generate`` call of a backend."""

    forward_passes: int = 0  # model calls (prefill + verification steps), batch-level
    row_steps: int = 0  # verification steps summed over rows
    drafted: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens kept
    new_tokens: int = 0  # tokens generated (EOS included)
    seconds: float = 0.0
    prefill_seconds: float = 0.0  # of ``seconds``: the prompts' passes (no draft can help)
    per_call: list[dict[str, float]] = field(default_factory=list)

    @property
    def mean_accepted(self) -> float:
        """Mean number of draft tokens kept per verification step (per row)."""
        return self.accepted / self.row_steps if self.row_steps else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        rate = self.accepted / self.drafted if self.drafted else 0.0
        return (
            f"{self.new_tokens} tokens in {self.seconds:.1f}s ({self.tokens_per_s:.1f} tok/s), "
            f"{self.forward_passes} forward passes, mean accepted draft {self.mean_accepted:.2f} "
            f"tokens/step, acceptance {rate:.0%}"
        )
