"""CTR training throughput (issue 34): the same backbone on the same rows, trained

  (a) as before: batch 128 (the demo's setting) and the reference code path
      (``train_ctr(reference=True)``: nn.Embedding's backward, DIN's concatenated
      attention input, per-batch gathers of every tensor, the (B, L, E) behaviour sequence
      and genres pooled as tensors, nn.Dropout, Adam's loop);
  (b) with the new defaults (``ModelConfig()``: batch 1024, the fast path);
  (c) DeepCTR-Torch's DeepFM on the same rows and inputs (its own ``fit``), batch 1024;

interleaved per seed, each to early stopping on validation AUC (same max epochs, patience).

    python benchmarks/train_throughput.py [--dataset ml-100k] [--backbone deepfm]
        [--seeds 3] [--max-rows 0] [--max-epochs 20]

Prints per arm: training rows/s (wall clock and this process's CPU time, training steps
only), seconds to the selected model, epochs, validation AUC (mean ± std over seeds); the
machine and load average; last `train_rows_per_s_ratio: X.X` (new / old, wall clock).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DATA = {
    "ml-100k": REPO.parent / "shared" / "data" / "ml-100k",
    "ml-1m": REPO.parent / "shared" / "data" / "ml-1m",
}
OLD = {"batch_size": 128}  # the demo's setting, with the reference code path


@dataclass
class Run:
    """One arm, one seed."""

    arm: str
    seed: int
    rows_per_s: float  # training steps only, wall clock
    cpu_rows_per_s: float  # training steps only, this process's CPU time
    seconds: float  # wall, start to the selected model (evaluations included)
    epochs: int
    best_epoch: int
    valid_auc: float


def load_features(dataset: str, data: Path | None, max_rows: int, seed: int = 0):
    """ML features with the train split cut to ``max_rows`` rows (a fixed random subset,
    the same for every arm); valid and test as they are."""
    import numpy as np

    from kar.data import load_movielens, make_time_split
    from kar.models.inputs import CTRFeatures

    folder = (data or DATA[dataset]).resolve()
    if not folder.exists():
        sys.exit(f"MovieLens data not found at {folder}: pass --data")
    ds = load_movielens(folder, variant=dataset)
    features = CTRFeatures.build(ds, make_time_split(ds), history_len=20)
    train = features.arrays["train"]
    n = len(train["label"])
    if 0 < max_rows < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
        features = replace(
            features, arrays={**features.arrays, "train": {k: v[rows] for k, v in train.items()}}
        )
    return features


def kar_run(features, backbone: str, arm: str, seed: int, max_epochs: int) -> Run:
    """kar's trainer: ``old`` (batch 128, reference path) or ``new`` (the defaults)."""
    from kar.models.train import train_ctr

    old = arm.startswith("old")
    config = {**(OLD if old else {}), "max_epochs": max_epochs}
    start = time.perf_counter()
    result = train_ctr(features, backbone, config, seed=seed, evaluate_test=False, reference=old)
    n = len(features.arrays["train"]["label"])
    return Run(
        arm=arm,
        seed=seed,
        rows_per_s=n / result.seconds_per_epoch,
        cpu_rows_per_s=n / result.cpu_seconds_per_epoch,
        seconds=time.perf_counter() - start,
        epochs=result.epochs_run,
        best_epoch=result.best_epoch,
        valid_auc=result.valid_auc,
    )


def deepctr_inputs(features, split: str) -> dict:
    """kar's index arrays as DeepCTR-Torch inputs (one array per feature)."""
    arrays = features.arrays[split]
    x = {"user": arrays["user"], "item": arrays["item"], "counters": arrays["counters"]}
    for j, name in enumerate(features.user_attr_names):
        x[f"u_{name}"] = arrays["user_attrs"][:, j]
    for j, name in enumerate(features.item_attr_names):
        x[f"i_{name}"] = arrays["item_attrs"][:, j]
    for name in ("genres", "history", "history_label"):
        x[name] = arrays[name]
    return x


def deepctr_model(features, seed: int, max_epochs: int):
    """DeepCTR-Torch DeepFM over the same fields as kar's (the behaviour sequence, its labels
    and the genres mean-pooled; the counters dense), kar's tower and embedding size."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DeepFM

    e = 16
    columns = [
        SparseFeat("user", features.n_users + 1, embedding_dim=e),
        SparseFeat("item", features.n_items + 1, embedding_dim=e),
        DenseFeat("counters", 4),
    ]
    for name, size in zip(features.user_attr_names, features.user_attr_sizes, strict=True):
        columns.append(SparseFeat(f"u_{name}", size, embedding_dim=e))
    for name, size in zip(features.item_attr_names, features.item_attr_sizes, strict=True):
        columns.append(SparseFeat(f"i_{name}", size, embedding_dim=e))
    genres = features.arrays["train"]["genres"].shape[1]
    sequences = [
        (SparseFeat("genres", features.n_genres, embedding_dim=e), genres),
        (SparseFeat("history", features.n_items + 1, e, embedding_name="item"), 20),
        (SparseFeat("history_label", 3, embedding_dim=e), 20),
    ]
    for feat, length in sequences:
        columns.append(VarLenSparseFeat(feat, maxlen=length, combiner="mean"))
    model = DeepFM(columns, columns, dnn_hidden_units=(128, 64), dnn_dropout=0.1, seed=seed)
    model.compile("adam", "binary_crossentropy")
    return model


def deepctr_run(features, seed: int, max_epochs: int, patience: int = 2) -> Run:
    """DeepCTR-Torch DeepFM, batch 1024, its ``fit`` one epoch at a time; early stopping on
    validation AUC as kar's (the best epoch's AUC is reported)."""
    import torch

    from kar.models.metrics import auc

    torch.manual_seed(seed)
    model = deepctr_model(features, seed, max_epochs)
    train, valid = deepctr_inputs(features, "train"), deepctr_inputs(features, "valid")
    y, y_valid = features.arrays["train"]["label"], features.arrays["valid"]["label"]
    n = len(y)
    start, wall, cpu = time.perf_counter(), 0.0, 0.0
    best, best_epoch, epochs = float("-inf"), 0, 0
    for epoch in range(1, max_epochs + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints the device every call
            model.fit(train, y, batch_size=1024, epochs=1, verbose=0)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        epochs = epoch
        score = auc(y_valid, model.predict(valid, batch_size=8192).ravel())
        if score > best:
            best, best_epoch = score, epoch
        elif epoch - best_epoch >= patience:
            break
    return Run("deepctr_deepfm", seed, n * epochs / wall, n * epochs / cpu,
               time.perf_counter() - start, epochs, best_epoch, best)  # fmt: skip


def summary_rows(runs: list[Run], arms: list[str]) -> list[str]:
    """One markdown row per arm: means (± std of the validation AUC) over the seeds."""

    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    out = [
        "| arm | train rows/s (wall) | train rows/s (CPU) | s to model | epochs (best) "
        "| valid AUC |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for arm in arms:
        rs = [r for r in runs if r.arm == arm]
        aucs = [r.valid_auc for r in rs]
        std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
        out.append(
            f"| {arm} | {mean([r.rows_per_s for r in rs]):,.0f} | "
            f"{mean([r.cpu_rows_per_s for r in rs]):,.0f} | {mean([r.seconds for r in rs]):.1f} | "
            f"{mean([r.epochs for r in rs]):.1f} ({mean([r.best_epoch for r in rs]):.1f}) | "
            f"{mean(aucs):.4f} ± {std:.4f} |"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dataset", default="ml-100k", choices=sorted(DATA))
    parser.add_argument("--data", type=Path, help="dataset folder (default ../shared/data/...)")
    parser.add_argument("--backbone", default="deepfm")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-rows", type=int, default=0, help="train rows (0: all)")
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--no-deepctr", action="store_true", help="skip DeepCTR-Torch's DeepFM")
    args = parser.parse_args()

    import torch
    from machine import machine_line

    torch.set_num_threads(1)
    features = load_features(args.dataset, args.data, args.max_rows)
    n = len(features.arrays["train"]["label"])
    arms: dict[str, Callable[[int], Run]] = {
        f"old {args.backbone} (batch 128, reference path)": lambda s: kar_run(
            features, args.backbone, "old", s, args.max_epochs
        ),
        f"new {args.backbone} (defaults)": lambda s: kar_run(
            features, args.backbone, "new", s, args.max_epochs
        ),
    }
    if not args.no_deepctr:
        arms["deepctr_deepfm"] = lambda s: deepctr_run(features, s, args.max_epochs)
    runs = []
    for seed in range(args.seeds):
        for name, run in arms.items():
            result = replace(run(seed), arm=name)
            runs.append(result)
            print(f"seed {seed} {name}: {result.rows_per_s:,.0f} rows/s, valid AUC "
                  f"{result.valid_auc:.4f}, {result.epochs} epochs", flush=True)  # fmt: skip
    names = list(arms)
    print()
    print("\n".join(summary_rows(runs, names)))
    old = statistics.fmean(r.rows_per_s for r in runs if r.arm == names[0])
    new = statistics.fmean(r.rows_per_s for r in runs if r.arm == names[1])
    old_cpu = statistics.fmean(r.cpu_rows_per_s for r in runs if r.arm == names[0])
    new_cpu = statistics.fmean(r.cpu_rows_per_s for r in runs if r.arm == names[1])
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\n{args.dataset}: {n:,} train rows, {len(features.arrays['valid']['label']):,} valid "
        f"rows; {args.seeds} seeds; {machine_line()}; load average {load}"
    )
    print(f"cpu_rows_per_s_ratio: {new_cpu / old_cpu:.1f}")
    print(f"train_rows_per_s_ratio: {new / old:.1f}")


if __name__ == "__main__":
    main()
