"""Consumer-side benchmark: kar's vectors read back through Feast into models kar does not train.

    python benchmarks/consumers.py --dataset demo-oracle [--project DIR] [--seeds 3]
        [--consumers deepctr_deepfm,rechub_widedeep,gbdt,kar_deepfm,kar_din]
        [--arms none,published,shuffled,pca,joint,published+affinity,shuffled+affinity,
                affinity,shuffled_affinity] [--max-rows N | --quick] [--out FILE.md]

Datasets (``--dataset``, comma-separated; ``--project`` names the folder when there is one):
- ``demo-oracle``: a project made like ``kar init DIR --demo oracle`` (item knowledge = each
  film's hidden traits in words, an ORACLE); user answers from the bundled LLM
  (``--user-knowledge llm``, minutes; reused when the project has them) or the users'
  attribute columns in words (``facts``, no LLM);
- ``ml-100k`` / ``ml-1m``: a MovieLens project with SmolLM2's answers (default
  ``.kar-bench/<dataset>``, where ``benchmarks/movielens.py`` generates; never generated
  here);
- ``ml-100k-facts``: MovieLens-100K with its own genres / year / user columns in words,
  imported as knowledge (benchmarks/imported_knowledge.py's texts; no LLM).
The project's stages run as needed (encode, train, publish through ``kar.Project``); the raw
encodings are published to two declared views (examples/joint_deepctr.py). Train / valid /
test are then built through Feast (``get_historical_features``, point in time).

Arms, all with the same ids and point-in-time counters (kar.models.counters):
``none``; ``published`` (kar's adapted vectors, as Feast returns them); ``shuffled`` (the
same vectors permuted across entities: identity without information); ``pca`` (a plain
32-d PCA of the raw encodings: does the CTR-aligned adaptor earn its place?); ``joint``
(kar's adaptor over the raw encodings inside the model, trained with its loss:
examples/joint_deepctr.py; kar's backbones: kar's own joint training). Fixed vectors are
z-scored per dimension over the entities, as a consumer scales any dense input.
Affinity arms (the user x item knowledge match ``knowledge_affinity:user_item_knowledge_dot``,
Feast's on-demand view: the inner product of the published user and item vectors, 0 where
either is missing; one more dense input beside the counters, z-scored on train):
``published+affinity`` (the published vectors plus the score read back through Feast) and its
control ``shuffled+affinity`` (the shuffled vectors plus the score recomputed from them);
``affinity`` (the score alone) and its control ``shuffled_affinity``. Each knowledge arm is
compared with its own control (``vs shuffled``): ``shuffled`` for published / pca / joint.

Consumers: ``deepctr_deepfm`` (DeepCTR-Torch DeepFM), ``rechub_widedeep`` (torch-rechub
Wide&Deep), ``gbdt`` (scikit-learn HistGradientBoosting; no joint arm), ``kar_<backbone>``
(kar's own backbones trained from scratch, the vectors as frozen inputs of the user and
target item). Each (consumer, arm) picks its configuration from a tiny grid on the first
seed's validation AUC, every run stops early on validation, the test split is read once.
DeepCTR-Torch's DeepFM also chooses there how its knowledge arms read the vectors: as one dense
input of the deep tower (``dense``) or as two more embedding fields the FM crosses with the ids
(``fields``, examples/joint_deepctr.py).
Prints how it ran, one table per dataset, and last the line
``consumers_above_shuffled: N/M consumer_gain_mean: X.XX% adaptor_vs_pca: +X.XX%``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "examples"))
ML100K = REPO.parent / "shared" / "data" / "ml-100k"
WORK = REPO / ".kar-bench-consumers"
DEFAULT_PROJECTS = {
    "demo-oracle": WORK / "demo-oracle",
    # benchmarks/movielens.py's projects (its --work default, then the dataset)
    "ml-100k": REPO / ".kar-bench" / "ml-100k",
    "ml-1m": REPO / ".kar-bench" / "ml-1m",
    "ml-100k-facts": WORK / "ml-100k-facts",
}
CONSUMERS = ("deepctr_deepfm", "rechub_widedeep", "gbdt", "kar_deepfm", "kar_din")
AFFINITY_ARMS = ("published+affinity", "shuffled+affinity", "affinity", "shuffled_affinity")
ARMS = ("none", "published", "shuffled", "pca", "joint", *AFFINITY_ARMS)
VECTORLESS_ARMS = ("none", "affinity", "shuffled_affinity")  # no (user, item) vectors read
KNOWLEDGE_ARMS = ("published", "pca", "joint", "published+affinity", "affinity")
# each knowledge arm's control: the same input from vectors shuffled across entities
CONTROLS = {"published+affinity": "shuffled+affinity", "affinity": "shuffled_affinity"}
SPLITS = ("train", "valid", "test")
PCA_DIM = 32

if TYPE_CHECKING:
    import kar
    from kar.adaptor import AdaptorConfig, KnowledgeInput
    from kar.data.schema import Split
    from kar.models.inputs import CTRFeatures


# -- knowledge read from Feast --------------------------------------------------------------


@dataclass
class KnowledgeColumn:
    """One kind's vectors as Feast returned them: per split, each sample's row in ``table``
    (-1: no vector existed at the sample's timestamp)."""

    rows: dict[str, np.ndarray]
    table: np.ndarray

    def shuffled(self, seed: int) -> KnowledgeColumn:
        """The same vectors, permuted across entities: each entity now reads another's."""
        perm = np.random.default_rng(seed).permutation(len(self.table))
        return dataclasses.replace(self, table=self.table[perm])

    def with_table(self, table: np.ndarray) -> KnowledgeColumn:
        return dataclasses.replace(self, table=np.asarray(table, dtype=np.float32))

    def standardized(self) -> KnowledgeColumn:
        """Each dimension z-scored over the table's rows (the entities)."""
        t = self.table
        return self.with_table((t - t.mean(0)) / np.where(t.std(0) > 1e-8, t.std(0), 1.0))

    def dense(self, split: str) -> np.ndarray:
        """(n, d) vectors of a split's samples, NaN where none (a GBDT's missing value)."""
        rows = self.rows[split]
        out = self.table[np.clip(rows, 0, None)].astype(np.float32)
        out[rows < 0] = np.nan
        return out


def read_knowledge(
    repo: Path, rows: pl.DataFrame, refs: dict[str, str]
) -> dict[str, KnowledgeColumn]:
    """Point-in-time join of ``rows`` (user_id, item_id, event_timestamp, split) with the
    Feast feature refs ``refs`` (key -> ``view:feature``; a key starts with its entity,
    ``user`` or ``item``): one :class:`KnowledgeColumn` per key."""
    return read_features(repo, rows, refs)[0]


def read_features(
    repo: Path, rows: pl.DataFrame, refs: dict[str, str], scalars: Sequence[str] = ()
) -> tuple[dict[str, KnowledgeColumn], dict[str, dict[str, np.ndarray]]]:
    """:func:`read_knowledge` plus, in the same Feast read, per-sample scalar features
    (``scalars``: refs such as ``knowledge_affinity:user_item_knowledge_dot``): ref -> split
    -> float64 values (NaN where Feast returned none)."""
    from kar.adaptor import vector_table
    from kar.features import training_set

    entity = rows.select("user_id", "item_id", "event_timestamp")
    frame = training_set(repo, entity, [*refs.values(), *scalars])
    split = rows["split"].to_numpy()
    out = {}
    for key, ref in refs.items():
        kind = key.split("_")[0]
        codes, table = vector_table(frame[f"{kind}_id"], frame[ref.split(":")[1]])
        out[key] = KnowledgeColumn({s: codes[split == s] for s in SPLITS}, table)
    values = {}
    for ref in scalars:
        column = frame[ref.split(":")[1]].cast(pl.Float64).fill_null(np.nan).to_numpy()
        values[ref] = {s: column[split == s] for s in SPLITS}
    return out, values


def affinity_column(user: KnowledgeColumn, item: KnowledgeColumn) -> dict[str, np.ndarray]:
    """Per split, the knowledge match <user, item> of each sample computed from the vectors
    the columns hold (0 where either is missing), as Feast's on-demand view computes it."""
    from kar.features.affinity import affinity_of_rows

    return {s: affinity_of_rows(user.table, item.table, user.rows[s], item.rows[s]) for s in SPLITS}


def pca_column(raw: KnowledgeColumn, dim: int = PCA_DIM, seed: int = 0) -> KnowledgeColumn:
    """A plain PCA of the raw encodings (fitted on every entity's vector, no labels)."""
    from sklearn.decomposition import PCA

    n = min(dim, *raw.table.shape)
    return raw.with_table(PCA(n_components=n, random_state=seed).fit_transform(raw.table))


# -- one dataset's data -----------------------------------------------------------------------


@dataclass
class ConsumerData:
    """What every consumer of one dataset trains on."""

    name: str
    features: CTRFeatures  # ids, counters, labels (kar's CTR inputs, no knowledge)
    knowledge: dict[str, KnowledgeColumn]  # user / item (published), user_raw / item_raw
    affinity: dict[str, np.ndarray]  # split -> the published pairs' knowledge match (Feast)
    adaptor_config: AdaptorConfig
    adaptor_dir: Path
    model_configs: dict[str, dict[str, Any]]  # kar backbone -> the project's config
    batch_size: int
    max_epochs: int
    rows: dict[str, int]
    feast_seconds: float

    def labels(self, split: str) -> np.ndarray:
        return self.features.arrays[split]["label"]

    def arm(self, arm: str, seed: int) -> tuple[KnowledgeColumn, KnowledgeColumn] | None:
        """The (user, item) vectors an arm reads (raw encodings for ``joint``)."""
        k = self.knowledge
        if arm in VECTORLESS_ARMS:
            return None
        if arm in ("published", "published+affinity"):
            return k["user"].standardized(), k["item"].standardized()
        if arm in ("shuffled", "shuffled+affinity"):
            user, item = k["user"].shuffled(seed), k["item"].shuffled(seed + 1)
            return user.standardized(), item.standardized()
        if arm == "pca":
            user, item = pca_column(k["user_raw"]), pca_column(k["item_raw"])
            return user.standardized(), item.standardized()
        if arm == "joint":
            return k["user_raw"], k["item_raw"]
        raise SystemExit(f"unknown arm {arm!r}: use {', '.join(ARMS)}")

    def affinity_of(self, arm: str, seed: int) -> dict[str, np.ndarray] | None:
        """The knowledge-match score an affinity arm adds (None for the other arms): read
        back through Feast for the published vectors; recomputed from the shuffled vectors
        (the same permutations as :meth:`arm`) for the controls."""
        if arm in ("published+affinity", "affinity"):
            return self.affinity
        if arm in ("shuffled+affinity", "shuffled_affinity"):
            k = self.knowledge
            return affinity_column(k["user"].shuffled(seed), k["item"].shuffled(seed + 1))
        return None

    def ctr_features(self, arm: str, seed: int) -> CTRFeatures:
        """kar's CTR inputs of an arm: the counters, plus for an affinity arm the score as
        one more dense column (z-scored on train, as the counters are)."""
        score = self.affinity_of(arm, seed)
        if score is None:
            return self.features
        train = np.nan_to_num(score["train"])
        mean, std = float(train.mean()), float(train.std()) or 1.0
        arrays = {
            s: {
                **a,
                "counters": np.hstack(
                    [a["counters"], ((np.nan_to_num(score[s]) - mean) / std)[:, None]]
                ).astype(np.float32),
            }
            for s, a in self.features.arrays.items()
        }
        return dataclasses.replace(self.features, arrays=arrays)


def sample_split(split: Split, max_rows: int | None, seed: int = 0) -> Split:
    """At most ``max_rows`` train rows and a quarter as many valid / test rows (time order
    kept); the whole split when ``max_rows`` is None."""
    if not max_rows:
        return split

    def sample(frame: pl.DataFrame, n: int) -> pl.DataFrame:
        if frame.height <= n:
            return frame
        picked = frame.with_row_index("_r").sample(n=n, seed=seed)
        return picked.sort("_r").drop("_r")

    quarter = max(max_rows // 4, 1)
    return dataclasses.replace(
        split,
        train=sample(split.train, max_rows),
        valid=sample(split.valid, quarter),
        test=sample(split.test, quarter),
    )


def consumer_data(
    name: str, project: kar.Project, max_rows: int | None, quick: bool
) -> ConsumerData:
    """Publish the raw encodings, then build train / valid / test through Feast."""
    from joint_deepctr import PUBLISHED_REFS, entity_rows, publish_raw_encodings

    from kar.features.affinity import DOT_REF
    from kar.models.inputs import CTRFeatures
    from kar.models.registry import available_models
    from kar.pipeline import adaptor_config

    raw_refs = publish_raw_encodings(project)  # its apply registers knowledge_affinity too
    split = sample_split(project.split, max_rows)
    rows = entity_rows(split)
    start = time.perf_counter()
    refs = dict(
        zip(("user", "item", "user_raw", "item_raw"), [*PUBLISHED_REFS, *raw_refs], strict=True)
    )
    knowledge, scalars = read_features(project.folder.feature_repo, rows, refs, [DOT_REF])
    feast_seconds = time.perf_counter() - start
    affinity = scalars[DOT_REF]
    recomputed = affinity_column(knowledge["user"], knowledge["item"])
    gap = max(float(np.nanmax(np.abs(affinity[s] - recomputed[s]), initial=0.0)) for s in SPLITS)
    scale = max(float(np.nanmax(np.abs(recomputed[s]), initial=0.0)) for s in SPLITS) or 1.0
    if not gap <= 1e-5 * scale:
        raise SystemExit(f"Feast's {DOT_REF} differs from the vectors' dot product by {gap}")
    tr = project.settings.training
    features = CTRFeatures.build(project.dataset, split, history_len=tr.history_len)
    n_train = split.train.height
    return ConsumerData(
        name=name,
        features=features,
        knowledge=knowledge,
        affinity=affinity,
        adaptor_config=adaptor_config(project.folder),
        adaptor_dir=project.folder.adaptor_dir,
        model_configs={b: tr.backbone_config(b) for b in available_models()},
        batch_size=1024 if n_train >= 20_000 else 128,
        max_epochs=2 if quick else 10,
        rows={s: getattr(split, s).height for s in SPLITS},
        feast_seconds=feast_seconds,
    )


# -- consumers -------------------------------------------------------------------------------


@dataclass
class Fitted:
    """A trained model: its validation AUC and how to score the test split (read once)."""

    valid_auc: float
    best_epoch: int
    predict_test: Callable[[], np.ndarray]


def rechub_model(n_users: int, n_items: int, n_counters: int, knowledge: KnowledgeInput | None):
    """torch-rechub Wide&Deep: wide = counters (+ knowledge), deep = ids + the same."""
    import torch
    from torch_rechub.basic.features import DenseFeature, SparseFeature
    from torch_rechub.models.ranking import WideDeep

    dense = [DenseFeature("counters", n_counters)]
    if knowledge is not None:
        dense.append(DenseFeature("knowledge", knowledge.out_dim))
    sparse = [SparseFeature("user", n_users, 16), SparseFeature("item", n_items, 16)]
    mlp = {"dims": [128, 64], "dropout": 0.1, "activation": "relu"}

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.knowledge = knowledge
            self.net = WideDeep(wide_features=dense, deep_features=sparse + dense, mlp_params=mlp)

        def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            x = {"user": batch["user"], "item": batch["item"], "counters": batch["counters"]}
            if self.knowledge is not None:
                x["knowledge"] = self.knowledge(batch["user_k"], batch["item_k"])
            return self.net(x)

    return Model()


def knowledge_input(
    data: ConsumerData, arm: str, point: dict[str, Any], seed: int
) -> tuple[KnowledgeInput | None, tuple[np.ndarray, np.ndarray]]:
    """The model's knowledge module for an arm (None for ``none``) and the rows it reads per
    split (user, item); ``joint``: kar's adaptor over the raw encodings, fresh from the
    project's experts/*.yaml or kar train's (``point["adaptor"]``)."""
    from kar.adaptor import KnowledgeInput, build_module, load_module
    from kar.models.tuning import adaptor_of

    columns = data.arm(arm, seed)
    if columns is None:
        n = {s: len(data.labels(s)) for s in SPLITS}
        return None, {s: (np.full(n[s], -1), np.full(n[s], -1)) for s in SPLITS}
    user, item = columns
    adaptor = None
    if arm == "joint":
        if point.get("adaptor") == "trained":
            adaptor = load_module(data.adaptor_dir)
        else:
            fit_on = (user.table, item.table)
            config = adaptor_of(point, data.adaptor_config)  # standardize from the grid
            adaptor = build_module(config, user.table.shape[1], fit_on=fit_on)
    rows = {s: (user.rows[s], item.rows[s]) for s in SPLITS}
    return KnowledgeInput(user.table, item.table, adaptor), rows


def fit_torch(
    data: ConsumerData, consumer: str, arm: str, point: dict[str, Any], seed: int
) -> Fitted:
    """DeepCTR-Torch DeepFM or torch-rechub Wide&Deep, trained by the example's loop."""
    from joint_deepctr import DeepFMConsumer, batch_tensors, fit, predict

    from kar.models.train import set_seed

    set_seed(seed)
    knowledge, rows = knowledge_input(data, arm, point, seed)
    f = data.ctr_features(arm, seed)
    tensors = {s: batch_tensors(f, s, *rows[s]) for s in SPLITS}
    n_counters = tensors["train"]["counters"].shape[1]
    if consumer == "deepctr_deepfm":
        model = DeepFMConsumer(
            f.n_users + 1, f.n_items + 1, n_counters, knowledge,
            knowledge_as=point.get("knowledge_as", "dense"), seed=seed,
        )  # fmt: skip
    else:
        model = rechub_model(f.n_users + 1, f.n_items + 1, n_counters, knowledge)
    result = fit(
        model, tensors["train"], tensors["valid"], lr=point["lr"], batch_size=data.batch_size,
        max_epochs=data.max_epochs, seed=seed,
    )  # fmt: skip
    return Fitted(result.valid_auc, result.best_epoch, lambda: predict(model, tensors["test"]))


def fit_gbdt(data: ConsumerData, arm: str, point: dict[str, Any], seed: int) -> Fitted:
    """HistGradientBoosting on the counters (+ the vectors, NaN where none); the number of
    trees chosen on validation AUC."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from kar.models.metrics import auc

    columns = data.arm(arm, seed)
    features = data.ctr_features(arm, seed)

    def x(split: str) -> np.ndarray:
        parts = [features.arrays[split]["counters"]]
        if columns is not None:
            parts += [c.dense(split) for c in columns]
        return np.hstack(parts)

    model = HistGradientBoostingClassifier(
        learning_rate=point["learning_rate"], max_leaf_nodes=point["max_leaf_nodes"],
        max_iter=point["max_iter"], early_stopping=False, l2_regularization=1.0,
        max_features=0.8, random_state=seed,
    )  # fmt: skip
    model.fit(x("train"), data.labels("train"))
    labels = data.labels("valid")
    scores = [auc(labels, p[:, 1]) for p in model.staged_predict_proba(x("valid"))]
    best = int(np.nanargmax(scores))

    def predict_test() -> np.ndarray:
        for i, p in enumerate(model.staged_predict_proba(x("test"))):
            if i == best:
                return p[:, 1]
        raise AssertionError("unreachable")

    return Fitted(scores[best], best + 1, predict_test)


def with_rows(features: CTRFeatures, user: KnowledgeColumn, item: KnowledgeColumn) -> CTRFeatures:
    """kar's CTR inputs reading, per sample, the user and target-item vectors Feast returned
    (row 0: none); the behaviour sequence carries ids only (Feast joins one row per sample)."""

    def matrix(col: KnowledgeColumn) -> tuple[np.ndarray, np.ndarray]:
        table = np.vstack([np.zeros((1, col.table.shape[1]), np.float32), col.table])
        missing = np.zeros(len(table), np.float32)
        missing[0] = 1.0
        return np.ascontiguousarray(table, dtype=np.float32), missing

    arrays = {
        s: {
            **a,
            "user_k": user.rows[s] + 1,
            "item_k": item.rows[s] + 1,
            "history_k": np.zeros_like(a["history_k"]),
        }
        for s, a in features.arrays.items()
    }
    (uk, um), (ik, im) = matrix(user), matrix(item)
    return dataclasses.replace(
        features, arrays=arrays, user_knowledge=uk, user_missing=um, item_knowledge=ik,
        item_missing=im,
    )  # fmt: skip


def fit_kar(
    data: ConsumerData, backbone: str, arm: str, point: dict[str, Any], seed: int
) -> Fitted:
    """A kar backbone from scratch: frozen vectors through a pass-through ("raw") adaptor,
    or, for ``joint``, kar's adaptor trained with it (kar's own joint arm); no gate."""
    from kar.adaptor import AdaptorConfig
    from kar.models.train import predict, train_ctr
    from kar.models.tuning import adaptor_of, start_and_config

    columns = data.arm(arm, seed)
    features, adaptor = data.ctr_features(arm, seed), None
    model_point, _ = start_and_config(point, warm_start=False)  # adaptor keys set below
    if columns is not None:
        features = with_rows(features, *columns)
        adaptor = AdaptorConfig(type="raw")
        if arm == "joint":
            adaptor = adaptor_of(point, data.adaptor_config)
    config = {**data.model_configs[backbone], **model_point, "max_epochs": data.max_epochs}
    result = train_ctr(features, backbone, config, adaptor, seed=seed, evaluate_test=False)
    test = features.tensors("test")
    return Fitted(result.valid_auc, result.best_epoch, lambda: predict(result.model, test))


def grid(consumer: str, arm: str, quick: bool) -> list[dict[str, Any]]:
    """The tiny grid a (consumer, arm) chooses from on validation (quick: its first point)."""
    if consumer == "gbdt":
        points = [
            {"learning_rate": 0.1, "max_leaf_nodes": 15, "max_iter": 40 if quick else 300},
            {"learning_rate": 0.05, "max_leaf_nodes": 31, "max_iter": 40 if quick else 300},
        ]
    else:
        points = [{"lr": 1e-3}, {"lr": 3e-3}]
        if arm == "joint" and consumer in ("deepctr_deepfm", "rechub_widedeep"):
            # kar train's adaptor, or a fresh one on the raw or the z-scored encodings
            starts = ({"adaptor": "fresh"}, {"adaptor": "fresh", "standardize": True},
                      {"adaptor": "trained"})  # fmt: skip
            points = [{**p, **a} for a in starts for p in points]
        elif arm == "joint":  # kar's own joint arm: input standardisation chosen too, as
            # `kar train` / `kar evaluate` choose it (kar.models.tuning.KNOWLEDGE_GRID)
            points = [{**p, "standardize": z} for z in (False, True) for p in points]
        if consumer == "deepctr_deepfm" and arm not in VECTORLESS_ARMS:
            points = [{**p, "knowledge_as": k} for k in ("dense", "fields") for p in points]
    return points[:1] if quick else points


def fit_consumer(
    data: ConsumerData, consumer: str, arm: str, point: dict[str, Any], seed: int
) -> Fitted:
    if consumer == "gbdt":
        return fit_gbdt(data, arm, point, seed)
    if consumer.startswith("kar_"):
        return fit_kar(data, consumer.removeprefix("kar_"), arm, point, seed)
    return fit_torch(data, consumer, arm, point, seed)


def run_cell(
    data: ConsumerData, consumer: str, arm: str, seeds: Sequence[int], quick: bool
) -> list[dict]:
    """One (consumer, arm): the grid point with the best first-seed validation AUC, then
    every seed with it; each run's test split scored once."""
    from kar.models.metrics import auc

    start = time.perf_counter()
    trials = [
        (p, fit_consumer(data, consumer, arm, p, seeds[0])) for p in grid(consumer, arm, quick)
    ]
    point, first = max(
        trials, key=lambda t: -math.inf if math.isnan(t[1].valid_auc) else t[1].valid_auc
    )
    runs = [(seeds[0], first)] + [
        (s, fit_consumer(data, consumer, arm, point, s)) for s in seeds[1:]
    ]
    out = []
    for seed, fitted in runs:
        test_auc = auc(data.labels("test"), fitted.predict_test())
        out.append({
            "dataset": data.name, "consumer": consumer, "arm": arm, "seed": seed,
            "valid_auc": fitted.valid_auc, "test_auc": test_auc, "best_epoch": fitted.best_epoch,
            "config": json.dumps(point, sort_keys=True),
        })  # fmt: skip
    seconds = time.perf_counter() - start
    aucs = ", ".join(f"{r['test_auc']:.4f}" for r in out)
    print(
        f"  {data.name} {consumer} {arm}: test AUC {aucs} ({json.dumps(point)}; {seconds:.0f} s)",
        flush=True,
    )
    return out


# -- the table -------------------------------------------------------------------------------


def summarize(results: pl.DataFrame) -> pl.DataFrame:
    """Mean ± std per dataset x consumer x arm; relative gain over the same consumer's
    ``none`` arm and the knowledge arm's control (``shuffled``, or its shuffled counterpart
    in :data:`CONTROLS`); ``counts``: above both by more than the largest seed std of the
    three (``above_shuffled``: above the control alone by more than the larger std)."""
    keys = ("dataset", "consumer")
    summary = results.group_by(*keys, "arm", maintain_order=True).agg(
        pl.col("test_auc").mean().alias("auc"),
        pl.col("test_auc").std().fill_null(0.0).alias("std"),
        pl.col("seed").n_unique().alias("n_seeds"),
        pl.col("config").first(),
    )

    def arm_of(arm: str, prefix: str) -> pl.DataFrame:
        picked = summary.filter(pl.col("arm") == arm)
        return picked.select(
            *keys, pl.col("auc").alias(f"{prefix}_auc"), pl.col("std").alias(f"{prefix}_std")
        )

    controls = summary.select(
        *keys,
        pl.col("arm").alias("_control"),
        pl.col("auc").alias("_shuf_auc"),
        pl.col("std").alias("_shuf_std"),
    )

    knowledge = pl.col("arm").is_in(KNOWLEDGE_ARMS)
    floor = pl.max_horizontal(pl.col("_none_auc"), pl.col("_shuf_auc").fill_null(-math.inf))
    spread = pl.max_horizontal("std", "_none_std", pl.col("_shuf_std").fill_null(0.0))
    order = {a: i for i, a in enumerate(ARMS)}
    consumers = {c: i for i, c in enumerate(results["consumer"].unique(maintain_order=True))}
    return (
        summary.with_columns(
            pl.col("arm").replace_strict(CONTROLS, default="shuffled").alias("_control")
        )
        .join(arm_of("none", "_none"), on=keys, how="left", maintain_order="left")
        .join(controls, on=[*keys, "_control"], how="left", maintain_order="left")
        .with_columns(
            pl.when(pl.col("arm") != "none")
            .then(pl.col("auc") / pl.col("_none_auc") - 1)
            .alias("vs_none"),
            pl.when(knowledge).then(pl.col("auc") / pl.col("_shuf_auc") - 1).alias("vs_shuffled"),
            pl.when(knowledge & pl.col("_shuf_auc").is_not_null())  # no control, no ✓
            .then(pl.col("auc") - floor > spread)
            .alias("counts"),
            pl.when(knowledge)
            .then(pl.col("auc") - pl.col("_shuf_auc") > pl.max_horizontal("std", "_shuf_std"))
            .alias("above_shuffled"),
            pl.col("arm").replace_strict(order, default=len(order)).alias("_order"),
            pl.col("consumer").replace_strict(consumers).alias("_consumer"),
        )
        .sort("_consumer", "_order", maintain_order=True)
        .drop("_order", "_consumer", "_control", "_none_auc", "_none_std", "_shuf_auc", "_shuf_std")
    )


def _pct(value: float | None, missing: str = "", sign: str = "+") -> str:
    """``value`` as a signed percentage; ``missing`` where there is none (None or NaN)."""
    return missing if value is None or math.isnan(value) else f"{100 * value:{sign}.2f}%"


def markdown_table(summary: pl.DataFrame) -> str:
    """One dataset's consumer x arm table (✓: above none and shuffled beyond the seed std)."""
    lines = [
        "| consumer | arm | test AUC mean ± std | seeds | vs none | vs shuffled | config |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in summary.iter_rows(named=True):
        mark = " ✓" if r["counts"] else ""
        lines.append(
            f"| {r['consumer']} | {r['arm']} | {r['auc']:.4f} ± {r['std']:.4f} | {r['n_seeds']} "
            f"| {_pct(r['vs_none'])} | {_pct(r['vs_shuffled'])}{mark} | `{r['config']}` |"
        )
    return "\n".join(lines)


def headline(summary: pl.DataFrame) -> str:
    """``consumers_above_shuffled: N/M consumer_gain_mean: X.XX% adaptor_vs_pca: +X.XX%``:
    over every (dataset, consumer) with the arms compared, the published vectors above
    the shuffled control beyond the seed std; their mean gain over no knowledge; and the
    mean relative AUC of the published (adapted) vectors over the PCA of the raw encodings."""
    published = summary.filter(pl.col("arm") == "published")
    compared = published.filter(pl.col("above_shuffled").is_not_null())
    above = int(compared["above_shuffled"].sum())
    pca = summary.filter(pl.col("arm") == "pca").select(
        "dataset", "consumer", pl.col("auc").alias("_pca")
    )
    paired = published.join(pca, on=("dataset", "consumer"))

    def mean(values: pl.Series) -> float:
        clean = values.drop_nulls().drop_nans()
        return float(clean.mean()) if len(clean) else math.nan  # type: ignore[arg-type]

    gain = mean(published["vs_none"])
    vs_pca = mean(paired["auc"] / paired["_pca"] - 1) if paired.height else math.nan
    return (
        f"consumers_above_shuffled: {above}/{compared.height} "
        f"consumer_gain_mean: {_pct(gain, 'n/a', sign='')} adaptor_vs_pca: {_pct(vs_pca, 'n/a')}"
    )


# -- projects --------------------------------------------------------------------------------


def has_answers(project: kar.Project, kind: str) -> bool:
    return project.store.answers(scenario=project.settings.scenario, kind=kind).height > 0


def demo_oracle_project(root: Path, user_knowledge: str) -> kar.Project:
    """``kar init ROOT --demo oracle`` (item knowledge imported); user answers from the
    bundled LLM (``llm``) or the users' columns in words (``facts``) unless it has some."""
    import kar
    from kar.data.texts import user_fact_texts, write_texts
    from kar.project import CONFIG_FILE
    from kar.records import KIND_USER

    project = (
        kar.Project(root)
        if (root / CONFIG_FILE).exists()
        else kar.Project.init(root, demo="oracle")
    )
    if not has_answers(project, KIND_USER):
        if user_knowledge == "llm":
            print(
                f"generating the users' answers with the bundled LLM in {root} (minutes)",
                flush=True,
            )
            project.generate(kinds={KIND_USER}, progress=False)
        else:
            texts = user_fact_texts(project.dataset.users, ["age_group", "gender"])
            project.import_knowledge(
                write_texts(texts, root / "data" / "user_facts.csv"), source="user-facts"
            )
    return project


def movielens_facts_project(root: Path, data: Path) -> kar.Project:
    """MovieLens-100K with its own columns in words as knowledge (no LLM)."""
    from imported_knowledge import movielens_project

    import kar
    from kar.records import KIND_ITEM

    folder, files = movielens_project(root, data)
    project = kar.Project(folder.root)
    if not has_answers(project, KIND_ITEM):
        for path, source, context in files:
            project.import_knowledge(path, source=source, context=context)
    return project


def smollm2_project(root: Path, dataset: str) -> kar.Project:
    """A MovieLens project (``dataset``: ml-100k or ml-1m) whose knowledge store holds
    SmolLM2's answers already."""
    import kar
    from kar.project import CONFIG_FILE
    from kar.records import KIND_USER

    if not (root / CONFIG_FILE).exists() or not has_answers(kar.Project(root), KIND_USER):
        raise SystemExit(
            f"{root} holds no {dataset} project with LLM answers: generate them first "
            f"(python benchmarks/movielens.py --dataset {dataset} --work {root.parent} "
            "--generate-only), or pass --project"
        )
    return kar.Project(root)


def ready_project(project: kar.Project, retrain: bool) -> dict[str, float]:
    """Run encode / train / publish where their outputs are missing (``retrain``: train and
    publish again); the seconds each stage took."""
    from kar.features import init_feature_repo

    folder, seconds = project.folder, {}
    if not (folder.feature_repo / "feature_store.yaml").exists():  # e.g. an evaluation project
        fs = project.settings.features
        init_feature_repo(
            folder.feature_repo, project=fs.project, online_store=fs.online_store,
            registry=fs.registry,
        )  # fmt: skip
    published = any((folder.feature_repo / "data" / "user_knowledge").glob("*.parquet"))
    stages = [
        ("encode", not (folder.encoded_dir / "meta.json").exists(), project.encode),
        ("train", retrain or not (folder.adaptor_dir / "config.json").exists(), project.train),
        ("publish", retrain or not published, project.publish),
    ]
    redo = False
    for name, missing, run in stages:
        if missing or redo:
            start = time.perf_counter()
            if name == "publish":
                run()
            else:
                run(progress=False)
            seconds[name] = time.perf_counter() - start
            redo = True  # a stage rerun makes the later ones stale
            print(f"  {name}: {seconds[name]:.0f} s", flush=True)
    return seconds


def open_project(dataset: str, root: Path, args: argparse.Namespace) -> kar.Project:
    if dataset == "demo-oracle":
        return demo_oracle_project(root, args.user_knowledge)
    if dataset in ("ml-100k", "ml-1m"):
        return smollm2_project(root, dataset)
    if dataset == "ml-100k-facts":
        return movielens_facts_project(root, args.data)
    raise SystemExit(f"unknown dataset {dataset!r}: use {', '.join(DEFAULT_PROJECTS)}")


# -- main ------------------------------------------------------------------------------------


def run_dataset(dataset: str, args: argparse.Namespace) -> tuple[pl.DataFrame, str]:
    """Every consumer x arm x seed of one dataset; the runs and the header of its table."""
    root = (args.project or DEFAULT_PROJECTS[dataset]).resolve()
    print(f"\n# {dataset}: project {root}", flush=True)
    project = open_project(dataset, root, args)
    stages = ready_project(project, args.retrain)
    data = consumer_data(dataset, project, args.max_rows, args.quick)
    rows = ", ".join(f"{s} {n}" for s, n in data.rows.items())
    print(f"  rows through Feast: {rows} ({data.feast_seconds:.0f} s)", flush=True)
    results = []
    for consumer in args.consumers:
        for arm in args.arms:
            if consumer == "gbdt" and arm == "joint":
                continue  # nothing to back-propagate into
            results += run_cell(data, consumer, arm, args.seeds, args.quick)
    lineage = project.folder.feature_repo / "kar_repo.json"
    adaptor = json.loads(lineage.read_text()).get("lineage", {}).get("adaptor", "?")
    ran = ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) or "none (reused)"
    header = (
        f"## {dataset}\n\nproject `{root.name}`; published adaptor `{adaptor}`; samples {rows} "
        f"(read through Feast in {data.feast_seconds:.0f} s); stages run: {ran}\n"
    )
    return pl.DataFrame(results), header


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--dataset", default="demo-oracle", help="demo-oracle, ml-100k, ml-100k-facts, ml-1m"
    )
    parser.add_argument("--project", type=Path, help="the project folder (one dataset only)")
    parser.add_argument("--data", type=Path, default=ML100K, help="MovieLens 100K folder")
    parser.add_argument("--seeds", type=int, help="number of seeds (default 3; --quick: 1)")
    parser.add_argument("--consumers", default=",".join(CONSUMERS), help="comma-separated")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated")
    parser.add_argument("--max-rows", type=int, help="at most N train rows (N/4 valid, test)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3000 rows, 1 seed, 2 epochs"
    )
    parser.add_argument(
        "--user-knowledge", default="llm", choices=["llm", "facts"], help="demo-oracle users"
    )
    parser.add_argument("--retrain", action="store_true", help="run kar train and publish again")
    parser.add_argument("--out", type=Path, help="write the tables as markdown here")
    args = parser.parse_args()
    args.datasets = [d.strip() for d in args.dataset.split(",") if d.strip()]
    if args.project is not None and len(args.datasets) != 1:
        parser.error("--project names the folder of one dataset")
    args.seeds = list(range(args.seeds or (1 if args.quick else 3)))
    if args.quick and args.max_rows is None:
        args.max_rows = 3000
    args.consumers = [c.strip() for c in args.consumers.split(",") if c.strip()]
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}: use {', '.join(ARMS)}")
    from kar.models.registry import available_models

    known = {*CONSUMERS, *(f"kar_{b}" for b in available_models())}
    unknown = [c for c in args.consumers if c not in known]
    if unknown:
        parser.error(f"unknown consumer(s) {unknown}: use {', '.join(sorted(known))}")
    return args


def main() -> None:
    import torch
    from machine import machine_line

    args = parse_args()
    torch.set_num_threads(1)
    command = "python benchmarks/consumers.py " + " ".join(sys.argv[1:])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    how = (
        f"machine: {machine_line()}; load average at start {load}; torch threads "
        f"{torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}\n"
        f"command: {command}"
    )
    print(how, flush=True)
    start = time.perf_counter()
    frames, sections = [], []
    for dataset in args.datasets:
        results, header = run_dataset(dataset, args)
        frames.append(results)
        table = markdown_table(summarize(results))
        sections.append(f"{header}\n{table}\n")
        print(f"\n{header}\n{table}", flush=True)
    summary = summarize(pl.concat(frames))
    line = headline(summary)
    minutes = (time.perf_counter() - start) / 60
    footer = f"{how}\nwall time {minutes:.1f} min; load average at the end " + ", ".join(
        f"{x:.2f}" for x in os.getloadavg()
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(sections) + f"\n{footer}\n\n`{line}`\n", encoding="utf-8")
        pl.concat(frames).write_csv(args.out.with_suffix(".runs.csv"))
    print(f"\n{footer}\n{line}")


if __name__ == "__main__":
    main()
