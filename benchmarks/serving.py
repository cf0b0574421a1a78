"""Serving latency: 1 user x N candidate items, raw Feast vs kar's serving API, per store.

    python benchmarks/serving.py [--requests 300] [--candidates 100] [--dim 32]
                                 [--users 943] [--items 1682] [--stores sqlite,redis]

For each online store (SQLite file, the default; Redis at 127.0.0.1:6379, skipped when
down) a fresh kar feature repo gets random vectors for MovieLens-100K-sized catalogues,
then the same request stream (a random user, N random candidates) is timed through:
  raw   FeatureStore.get_online_features(user + item refs, N entity rows).to_dict()
  ours  kar.features.serving.KnowledgeServer.get(user, candidates) (items cached in
        process, the user read from the store per request)
Both get warm-up requests first (not timed). The last line is, for the default store:
  p50_ratio_vs_raw_feast: <ours p50 / raw p50> p99_ms: <ours p99>
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _percentiles(seconds: list[float]) -> tuple[float, float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean())


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


def bench_store(kind: str, args: argparse.Namespace, root: Path) -> dict[str, tuple]:
    import polars as pl

    from kar.features import init_feature_repo, publish
    from kar.features.repo import ITEM_FEATURE, ITEM_VIEW, USER_FEATURE, USER_VIEW
    from kar.features.serving import KnowledgeServer

    online = {"type": "redis", "connection_string": "127.0.0.1:6379"} if kind == "redis" else None
    project = f"kar_bench_{kind}_{uuid.uuid4().hex[:6]}"
    repo = init_feature_repo(root / kind, project=project, vector_dim=args.dim, online_store=online)
    rng = np.random.default_rng(0)
    users = [str(u) for u in range(1, args.users + 1)]
    items = [str(i) for i in range(1, args.items + 1)]

    def frame(key: str, ids: list[str]) -> pl.DataFrame:
        vectors = rng.standard_normal((len(ids), args.dim)).astype(np.float32)
        return pl.DataFrame({key: ids, "vector": vectors.tolist()})

    publish(repo, frame("user_id", users), frame("item_id", items))
    server = KnowledgeServer(repo)
    store = server.reader.store  # the same opened FeatureStore, for the raw calls
    refs = [f"{USER_VIEW}:{USER_FEATURE}", f"{ITEM_VIEW}:{ITEM_FEATURE}"]
    requests = [
        (users[rng.integers(len(users))], list(rng.choice(items, args.candidates, replace=False)))
        for _ in range(args.requests + args.warmup)
    ]

    def raw(user: str, candidates: list[str]) -> None:
        rows = [{"user_id": user, "item_id": c} for c in candidates]
        store.get_online_features(features=refs, entity_rows=rows).to_dict()

    def ours(user: str, candidates: list[str]) -> None:
        server.get(user, candidates)

    # the first request of each path, cold (ours: empty item cache)
    out: dict[str, tuple] = {}
    for name, fn in (("raw", raw), ("ours", ours)):
        t = time.perf_counter()
        fn(*requests[0])
        cold = (time.perf_counter() - t) * 1e3
        for request in requests[1 : args.warmup]:
            fn(*request)
        times = []
        for request in requests[args.warmup :]:
            t = time.perf_counter()
            fn(*request)
            times.append(time.perf_counter() - t)
        out[name] = (*_percentiles(times), cold)
    # same answers through both paths
    user, candidates = requests[-1]
    batch = server.get(user, candidates)
    raw_items = store.get_online_features(
        features=refs[1:], entity_rows=[{"item_id": c} for c in candidates]
    ).to_dict()[ITEM_FEATURE]
    assert np.allclose(batch.items, np.asarray(raw_items, dtype=np.float32)), "paths disagree"
    if kind == "redis":
        store.provider.teardown_infra(store.project, store.list_feature_views(), [])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--users", type=int, default=943)
    parser.add_argument("--items", type=int, default=1682)
    parser.add_argument("--stores", default="sqlite,redis")
    args = parser.parse_args()

    import feast

    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    print(
        f"# serving benchmark: 1 user x {args.candidates} candidates, {args.dim}-dim vectors, "
        f"{args.users} users / {args.items} items, {args.requests} timed requests after "
        f"{args.warmup} warm-up; python {platform.python_version()}, feast {feast.__version__}, "
        f"{platform.machine()} {os.cpu_count()} CPUs"
    )
    results: dict[str, dict[str, tuple]] = {}
    with tempfile.TemporaryDirectory(prefix="kar-serving-") as tmp:
        for kind in stores:
            if kind == "redis" and not _redis_up():
                print("redis: skipped (not reachable at 127.0.0.1:6379; .ci/run starts it)")
                continue
            results[kind] = bench_store(kind, args, Path(tmp))
    print(f"{'store':8} {'path':5} {'p50_ms':>8} {'p99_ms':>8} {'mean_ms':>8} {'cold_ms':>8}")
    for kind, paths in results.items():
        for name, (p50, p99, mean, cold) in paths.items():
            print(f"{kind:8} {name:5} {p50:8.3f} {p99:8.3f} {mean:8.3f} {cold:8.1f}")
        ratio = paths["ours"][0] / paths["raw"][0]
        print(f"{kind:8} ours/raw p50 ratio {ratio:.3f}")
    default = stores[0]
    if default not in results:
        sys.exit(f"the default store {default} was not measured")
    ours, raw = results[default]["ours"], results[default]["raw"]
    sys.stdout.flush()
    print(f"p50_ratio_vs_raw_feast: {ours[0] / raw[0]:.2f} p99_ms: {ours[1]:.1f}", flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # skip duckdb's noisy teardown ("nanobind: leaked ...") after the figures
