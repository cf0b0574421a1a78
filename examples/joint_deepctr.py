"""KAR's joint path with DeepCTR-Torch: kar's hybrid-expert adaptor inside your DeepFM.

    python examples/joint_deepctr.py PROJECT [--adaptor fresh|trained] [--epochs 10]
        [--knowledge-as fields|dense] [--no-standardize] [--knowledge-lr-scale 1]

PROJECT is a kar project that has run `kar encode` (and `kar train` for ``--adaptor
trained``). What it does, in the order a user would:

1. publishes the project's raw encodings (``artifacts/encoded``) to two declared Feast
   views, ``user_raw_encoding`` and ``item_raw_encoding``: a user's valid from their as-of
   instant, items' from the start of the data (offline only; a new version when the
   encodings change);
2. builds train / valid / test through Feast (``get_historical_features``, point in
   time): each sample gets the encodings that existed at its timestamp;
3. puts kar's adaptor (:func:`kar.adaptor.build_module` from experts/hea.yaml, or
   :func:`kar.adaptor.load_module` of ``artifacts/adaptor``) into a DeepCTR-Torch DeepFM as
   its knowledge input (:class:`kar.adaptor.KnowledgeInput`): by default the user's and
   the item's adapted vectors become two more FM fields (:class:`KnowledgeFields`), and a
   fresh adaptor z-scores its inputs; it trains both together on the CTR loss; epochs are
   chosen on validation AUC, the test split is read once.

The same ``DeepFMConsumer`` without an adaptor reads kar's published 32-d vectors as fixed
dense inputs (the frozen path). benchmarks/consumers.py runs both (docs/consumers.md).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch
from torch import nn

if TYPE_CHECKING:
    import kar
    from kar.adaptor import KnowledgeInput
    from kar.models.inputs import CTRFeatures

RAW_FEATURES = {"user": "user_raw_encoding", "item": "item_raw_encoding"}
PUBLISHED_REFS = ["user_knowledge:user_knowledge_vector", "item_knowledge:item_knowledge_vector"]
SPLITS = ("train", "valid", "test")


def _encoded_fingerprint(encoded: Path) -> str:
    digest = hashlib.sha256()
    for name in ("user_vectors.parquet", "item_vectors.parquet"):
        digest.update((encoded / name).read_bytes())
    return digest.hexdigest()[:16]


def publish_raw_encodings(project: kar.Project) -> list[str]:
    """Publish ``artifacts/encoded`` to the declared views ``user_raw_encoding`` /
    ``item_raw_encoding`` (offline store only) unless this exact encoding is there already;
    returns the two Feast feature refs."""
    from kar.encoding import EntityVectors
    from kar.features import KnowledgeFeature, add_features, publish_feature
    from kar.features.declare import list_features

    repo, encoded = project.folder.feature_repo, project.folder.encoded_dir
    vectors = EntityVectors.load(encoded)
    tag = f"raw encodings {_encoded_fingerprint(encoded)}"
    refs = []
    for kind, name in RAW_FEATURES.items():
        versions = [f for f in list_features(repo) if f.name == name]
        current = next((f for f in versions if f.description == tag and not f.retired), None)
        if current is None:
            current = KnowledgeFeature(
                name=name,
                version=max((f.version for f in versions), default=0) + 1,
                entity=kind,
                scenario=project.settings.scenario,
                encoder=vectors.encoder_id,
                dim=vectors.dim,
                description=tag,
            )
            add_features(repo, [current])
            frame = valid_from(project, kind, vectors.frame(kind))
            publish_feature(repo, name, frame, version=current.version, materialize=False)
        refs.append(current.ref)
    return refs


def valid_from(project: kar.Project, kind: str, vectors: pl.DataFrame) -> pl.DataFrame:
    """(entity_id, vector, event_timestamp): a user's encoding is valid from their as-of
    instant (it was written from the history before it), an item's from the data's start."""
    split = project.split
    start = min(f["timestamp"].min() for f in (split.history, split.train) if f.height)
    if kind == "item":
        return vectors.with_columns(pl.lit(start).alias("event_timestamp"))
    as_of = split.as_of.select(pl.col("user_id").alias("entity_id"), "as_of")
    joined = vectors.join(as_of, on="entity_id", how="left")
    valid = pl.col("as_of").fill_null(start).alias("event_timestamp")
    return joined.select("entity_id", "vector", valid)


def entity_rows(split: object) -> pl.DataFrame:
    """The train, valid and test samples, in this order, as a Feast entity frame
    (user_id, item_id, event_timestamp, label, split)."""
    frames = [
        getattr(split, s)
        .select("user_id", "item_id", pl.col("timestamp").alias("event_timestamp"), "label")
        .with_columns(pl.lit(s).alias("split"))
        for s in SPLITS
    ]
    return pl.concat(frames)


def batch_tensors(
    features: CTRFeatures, split: str, user_rows: np.ndarray, item_rows: np.ndarray
) -> dict[str, torch.Tensor]:
    """Ids, point-in-time counters and labels of a split (your own features go here; this
    example takes kar's user / item positive rates so far), plus the knowledge rows."""
    arrays = features.arrays[split]
    return {
        "user": torch.from_numpy(arrays["user"]),
        "item": torch.from_numpy(arrays["item"]),
        "counters": torch.from_numpy(arrays["counters"]),
        "label": torch.from_numpy(arrays["label"]),
        "user_k": torch.from_numpy(np.asarray(user_rows, dtype=np.int64)),
        "item_k": torch.from_numpy(np.asarray(item_rows, dtype=np.int64)),
    }


class KnowledgeFields(nn.Module):
    """The user and item halves of a knowledge input, each mapped to one embedding field:
    ``(B, 2 * d) -> (B, 2, embedding_dim)``, so the FM crosses them with every other field
    (the way kar's own DeepFM reads knowledge)."""

    def __init__(self, in_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.user = nn.Linear(in_dim // 2, embedding_dim)
        self.item = nn.Linear(in_dim // 2, embedding_dim)

    def forward(self, knowledge: torch.Tensor) -> torch.Tensor:
        user, item = knowledge.chunk(2, dim=-1)
        return torch.stack([self.user(user), self.item(item)], dim=1)


class DeepFMConsumer(nn.Module):
    """DeepCTR-Torch's DeepFM over user id, item id, the counters and (optionally) kar's
    knowledge; ``forward(batch)`` returns click probabilities.

    ``knowledge_as``: ``dense`` feeds the knowledge to the deep tower as one dense input
    (DeepCTR's DenseFeat: the FM never sees it); ``fields`` maps the user and the item side to
    two more embedding fields (:class:`KnowledgeFields`) that the FM crosses with the ids and
    the deep tower reads."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_counters: int,
        knowledge: KnowledgeInput | None = None,
        *,
        knowledge_as: str = "dense",
        embedding_dim: int = 16,
        hidden: tuple[int, ...] = (128, 64),
        dropout: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from deepctr_torch.inputs import DenseFeat, SparseFeat
        from deepctr_torch.models import DeepFM

        if knowledge_as not in ("dense", "fields"):
            raise ValueError(f"knowledge_as: dense or fields, not {knowledge_as!r}")
        columns = [
            SparseFeat("user", n_users, embedding_dim=embedding_dim),
            SparseFeat("item", n_items, embedding_dim=embedding_dim),
            DenseFeat("counters", n_counters),
        ]
        self.knowledge = knowledge
        self.fields: KnowledgeFields | None = None
        if knowledge is not None and knowledge_as == "fields":
            self.fields = KnowledgeFields(knowledge.out_dim, embedding_dim)
            columns.append(DenseFeat("knowledge", 2 * embedding_dim))
        elif knowledge is not None:
            columns.append(DenseFeat("knowledge", knowledge.out_dim))
        self.deepfm = DeepFM(
            columns, columns, dnn_hidden_units=hidden, dnn_dropout=dropout, seed=seed
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [batch["user"].float()[:, None], batch["item"].float()[:, None], batch["counters"]]
        if self.knowledge is None:
            return self.deepfm(torch.cat(parts, dim=1)).squeeze(-1)
        knowledge = self.knowledge(batch["user_k"], batch["item_k"])
        if self.fields is None:
            return self.deepfm(torch.cat([*parts, knowledge], dim=1)).squeeze(-1)
        fields = self.fields(knowledge)
        return self._with_fields(torch.cat([*parts, fields.flatten(1)], dim=1), fields)

    def _with_fields(self, x: torch.Tensor, fields: torch.Tensor) -> torch.Tensor:
        """DeepCTR's DeepFM forward with the knowledge fields joining the FM's fields (the
        deep tower reads them as the dense input ``knowledge``)."""
        from deepctr_torch.inputs import combined_dnn_input

        m = self.deepfm
        sparse, dense = m.input_from_feature_columns(x, m.dnn_feature_columns, m.embedding_dict)
        logit = m.linear_model(x) + m.fm(torch.cat([*sparse, fields], dim=1))
        logit = logit + m.dnn_linear(m.dnn(combined_dnn_input(sparse, dense)))
        return m.out(logit).squeeze(-1)

    def extra_loss(self) -> torch.Tensor:
        """DeepCTR's L2 terms (embeddings, linear part)."""
        return self.deepfm.get_regularization_loss().squeeze()


@dataclass
class FitResult:
    """The restored best epoch (0: the untrained start) and the losses of every epoch."""

    valid_auc: float
    best_epoch: int
    losses: list[float] = field(default_factory=list)


@torch.no_grad()
def predict(model: nn.Module, tensors: dict[str, torch.Tensor], batch: int = 8192) -> np.ndarray:
    """Click probabilities of every row (eval mode)."""
    model.eval()
    n = len(tensors["label"])
    out = [model({k: v[s : s + batch] for k, v in tensors.items()}) for s in range(0, n, batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def fit(
    model: nn.Module,
    train: dict[str, torch.Tensor],
    valid: dict[str, torch.Tensor],
    *,
    lr: float = 1e-3,
    batch_size: int = 1024,
    max_epochs: int = 10,
    patience: int = 2,
    seed: int = 0,
    knowledge_lr_scale: float = 1.0,
) -> FitResult:
    """Plain PyTorch: Adam on the binary cross-entropy (+ the model's ``extra_loss``), every
    parameter trained together (the adaptor's too, at ``lr * knowledge_lr_scale``: the
    model's ``knowledge`` module); early stopping on validation AUC, the best epoch's weights
    restored."""
    from kar.models.metrics import auc

    knowledge = getattr(model, "knowledge", None)
    own = {id(p) for p in knowledge.parameters()} if knowledge is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in own], "lr": lr}]
    if own:
        groups.append({"params": list(knowledge.parameters()), "lr": lr * knowledge_lr_scale})
    optimiser = torch.optim.Adam(groups, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    labels = valid["label"].numpy()
    best = (auc(labels, predict(model, valid)), 0, copy.deepcopy(model.state_dict()))
    losses: list[float] = []
    n = len(train["label"])
    for epoch in range(1, max_epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=generator).split(batch_size):
            batch = {k: v[idx] for k, v in train.items()}
            prob = model(batch).clamp(1e-7, 1 - 1e-7)
            loss = nn.functional.binary_cross_entropy(prob, batch["label"])
            total += loss.item() * len(idx)
            extra = getattr(model, "extra_loss", None)
            if extra is not None:
                loss = loss + extra()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        losses.append(total / n)
        score = auc(labels, predict(model, valid))
        if score > best[0]:
            best = (score, epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= patience:
            break
    model.load_state_dict(best[2])
    return FitResult(valid_auc=best[0], best_epoch=best[1], losses=losses)


def main() -> None:
    import kar
    from kar.adaptor import KnowledgeInput, build_module, load_module, vector_table
    from kar.features import training_set
    from kar.models.inputs import CTRFeatures
    from kar.models.metrics import auc
    from kar.models.train import set_seed
    from kar.pipeline import adaptor_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--adaptor", default="fresh", help="fresh (experts/hea.yaml) | trained")
    parser.add_argument(
        "--knowledge-as", default="fields", choices=["fields", "dense"],
        help="fields: two FM fields (default); dense: one input of the deep tower only",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--knowledge-lr-scale", type=float, default=1.0, help="adaptor lr x")
    parser.add_argument(
        "--standardize", action=argparse.BooleanOptionalAction, default=True,
        help="fresh adaptor: z-score its inputs over the entities (default: on)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    set_seed(0)  # one torch thread
    project = kar.Project(args.project)
    refs = publish_raw_encodings(project)  # 1. raw encodings -> Feast
    rows = entity_rows(project.split)
    frame = training_set(project.folder.feature_repo, rows, refs)  # 2. point in time
    user_rows, user_table = vector_table(frame["user_id"], frame[RAW_FEATURES["user"]])
    item_rows, item_table = vector_table(frame["item_id"], frame[RAW_FEATURES["item"]])
    if args.adaptor == "trained":
        adaptor = load_module(project.folder.adaptor_dir)
    else:
        config = adaptor_config(project.folder)  # kar.yaml's training.adaptor (experts/hea.yaml)
        config = config.model_copy(update={"standardize": args.standardize})
        adaptor = build_module(config, user_table.shape[1], fit_on=(user_table, item_table))
    features = CTRFeatures.build(project.dataset, project.split)  # ids + counters
    in_split = {s: (rows["split"] == s).to_numpy() for s in SPLITS}
    data = {s: batch_tensors(features, s, user_rows[m], item_rows[m]) for s, m in in_split.items()}
    knowledge = KnowledgeInput(user_table, item_table, adaptor)  # 3. the adaptor, joint
    n_counters = data["train"]["counters"].shape[1]
    model = DeepFMConsumer(
        features.n_users + 1, features.n_items + 1, n_counters, knowledge,
        knowledge_as=args.knowledge_as,
    )  # fmt: skip
    result = fit(
        model, data["train"], data["valid"], lr=args.lr, batch_size=args.batch_size,
        max_epochs=args.epochs, knowledge_lr_scale=args.knowledge_lr_scale,
    )  # fmt: skip
    test_auc = auc(data["test"]["label"].numpy(), predict(model, data["test"]))
    print(f"features: {', '.join(refs)} ({frame.height} rows through Feast)")
    print(
        f"DeepFM + kar adaptor ({args.adaptor}), trained jointly: valid AUC "
        f"{result.valid_auc:.4f} (epoch {result.best_epoch}), test AUC {test_auc:.4f}"
    )


if __name__ == "__main__":
    main()
