"""Incremental refresh vs full rebuild, refreshed vs frozen knowledge, collective vs
individual knowledge, on a MovieLens-100K slice (real SmolLM2, MiniLM, adaptor, Feast).

Knowledge is built as of a date T for a slice of users and items (the full rebuild:
generate + encode + adapt + publish, timed), the adaptor is trained with a CTR model
on the events before T, then the next weeks are replayed: first a change touching about
1% of the slice's users (timed refresh -> cost_ratio), then the rest of the replay
window, then the same refresh again (must make 0 LLM calls). AUC is measured on the
weeks after the replay window with refreshed vs frozen user knowledge, and with
collective (one question per cluster) vs individual knowledge. Prints, last,
``llm_calls_unchanged: N cost_ratio: X.XX``.

    python benchmarks/refresh.py --ml100k ../shared/data/ml-100k --users 150 --items 150
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import polars as pl  # noqa: E402


def _slice(ds, t0: datetime, n_users: int, n_items: int):
    """The first n_users (by id) with >= 5 events before t0, and their n_items most
    rated items before t0; every event of that slice (before and after t0)."""
    inter = ds.interactions
    before = inter.filter(pl.col("timestamp") < t0)
    counts = before.group_by("user_id").len().filter(pl.col("len") >= 5)
    users = sorted(counts["user_id"].to_list(), key=int)[:n_users]
    top = (
        before.filter(pl.col("user_id").is_in(users))
        .group_by("item_id")
        .len()
        .sort(["len", "item_id"], descending=[True, False])
        .head(n_items)["item_id"]
        .to_list()
    )
    inter = inter.filter(pl.col("user_id").is_in(users) & pl.col("item_id").is_in(top))
    return dataclasses.replace(
        ds,
        interactions=inter,
        items=ds.items.filter(pl.col("item_id").is_in(top)),
        users=ds.users.filter(pl.col("user_id").is_in(users)),
    )


def _upto(ds, t: datetime):
    return dataclasses.replace(ds, interactions=ds.interactions.filter(pl.col("timestamp") <= t))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ml100k", default=str(Path(__file__).parents[2] / "shared/data/ml-100k"))
    ap.add_argument("--date", default="1998-02-01", help="knowledge built as of (UTC)")
    ap.add_argument("--users", type=int, default=150)
    ap.add_argument("--items", type=int, default=150)
    ap.add_argument("--tokens", type=int, default=32, help="max_new_tokens, users and items")
    ap.add_argument("--replay-weeks", type=int, default=2)
    ap.add_argument("--test-weeks", type=int, default=4)
    ap.add_argument("--user-clusters", type=int, default=10)
    ap.add_argument("--item-clusters", type=int, default=8)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from kar.adaptor import TrainedAdaptor
    from kar.collective import cluster_entities, member_answers
    from kar.data import load_movielens, make_time_split
    from kar.encoding import encode_knowledge
    from kar.features import publish
    from kar.generation import KnowledgeStore
    from kar.models.inputs import CTRFeatures
    from kar.models.train import evaluate, train_ctr
    from kar.pipeline import adaptor_config, answer_prompts, init_project, make_encoder
    from kar.project import ProjectFolder
    from kar.prompts import Scenario, build_item_prompts, build_user_prompts
    from kar.prompts.collective import build_cluster_prompts
    from kar.refresh import refresh

    work = Path(args.work or tempfile.mkdtemp(prefix="kar-refresh-bench-"))
    t0 = datetime.fromisoformat(args.date).replace(tzinfo=UTC)
    t_replay = t0 + timedelta(weeks=args.replay_weeks)
    t_test = t_replay + timedelta(weeks=args.test_weeks)
    full = _slice(load_movielens(args.ml100k), t0, args.users, args.items)
    ds0 = _upto(full, t0 - timedelta(microseconds=1))
    n_users = ds0.interactions["user_id"].n_unique()
    n_items = full.items.height

    project = init_project(work / "project", n_users=10, force=True)
    s = project.settings
    s.scenario, s.name = "movies", "refresh-bench"
    s.generation.max_new_tokens_user = s.generation.max_new_tokens_item = args.tokens
    s.generation.truncated, s.generation.max_retries = "accept", 0
    project.save()
    project = ProjectFolder.load(project.root)
    scenario = Scenario.load("movies", search_dirs=project.prompt_dirs)
    store = KnowledgeStore(project.knowledge_store_url)
    print(
        f"slice: {n_users} users x {n_items} items of ML-100K, {full.interactions.height} events; "
        f"knowledge as of {t0.date()}, replay to {t_replay.date()}, test to {t_test.date()}; "
        f"SmolLM2-135M max_new_tokens={args.tokens}, batch {s.generation.batch_size}, "
        f"torch threads 1; work {work}"
    )

    # -- full build as of t0 (timed: generate, encode, adapt, publish) -------------------
    timings: dict[str, float] = {}
    start = time.perf_counter()
    prompts = build_user_prompts(ds0, scenario, t0) + build_item_prompts(ds0, scenario)
    reports = answer_prompts(project, prompts, store=store, progress=False)
    full_calls = sum(r.llm_calls for r in reports.values())
    timings["generate"] = time.perf_counter() - start
    t = time.perf_counter()
    encoder = make_encoder(project)
    raw = encode_knowledge(store.answers(scenario="movies"), encoder)
    timings["encode"] = time.perf_counter() - t

    # adaptor + CTR model trained on events before t0 (not timed: a rebuild reuses it)
    split = make_time_split(ds0, history_fraction=0.5, valid_fraction=0.15, test_fraction=0.0)
    later = full.interactions.filter(
        (pl.col("timestamp") > t_replay) & (pl.col("timestamp") <= t_test)
    )
    later = later.filter(pl.col("user_id").is_in(ds0.interactions["user_id"].unique().implode()))
    split = dataclasses.replace(split, test=later.select(split.train.columns))
    feats = CTRFeatures.build(full, split, knowledge_users=raw.users, knowledge_items=raw.items)
    tr = time.perf_counter()
    result = train_ctr(feats, "deepfm", adaptor_config=adaptor_config(project), seed=0)
    train_s = time.perf_counter() - tr
    result.trained_adaptor(encoder=raw.encoder_id).save(project.adaptor_dir)

    t = time.perf_counter()
    adaptor = TrainedAdaptor.load(project.adaptor_dir)
    users_v, items_v = adaptor.export(raw.users, raw.items)
    timings["adapt"] = time.perf_counter() - t
    t = time.perf_counter()
    publish(project.feature_repo, users_v, items_v, event_timestamp=t0)
    timings["publish"] = time.perf_counter() - t
    full_s = sum(timings.values())
    print(
        f"full rebuild: {len(prompts)} prompts, {full_calls} LLM calls, {full_s:.1f} s "
        + "("
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
        + f"); "
        f"adaptor + deepfm training {train_s:.1f} s (not counted)"
    )

    # -- replay: bootstrap the watermark at t0, then a ~1% change ------------------------
    refresh(project, dataset=ds0, initial_watermark=t0 - timedelta(microseconds=1))
    replay = full.interactions.filter(
        (pl.col("timestamp") >= t0) & (pl.col("timestamp") <= t_replay)
    ).sort("timestamp", "user_id", "item_id")
    target = max(1, round(0.01 * n_users))
    seen: list[str] = []
    cut = None
    for user, ts in replay.select("user_id", "timestamp").iter_rows():
        if user not in seen:
            if len(seen) == target:
                break
            seen.append(user)
        cut = ts
    assert cut is not None, "no events in the replay window"
    t = time.perf_counter()
    r1 = refresh(project, dataset=_upto(full, cut))
    refresh_s = time.perf_counter() - t
    unchanged = sorted(set(store.answers(scenario="movies")["entity_id"]) - set(seen))
    print(
        f"refresh 1 (~1% of users): {r1.events} events, {r1.users} users, {r1.items} items, "
        f"{r1.llm_calls} LLM calls, {refresh_s:.1f} s "
        f"({', '.join(f'{k} {v:.1f}' for k, v in r1.seconds.items())})"
    )
    t = time.perf_counter()
    r2 = refresh(project, dataset=_upto(full, t_replay))
    print(
        f"refresh 2 (rest of {args.replay_weeks} weeks): {r2.events} events, {r2.users} users, "
        f"{r2.llm_calls} LLM calls, {time.perf_counter() - t:.1f} s"
    )
    r3 = refresh(project, dataset=_upto(full, t_replay))
    print(f"refresh 3 (same data again): {r3.events} events, {r3.llm_calls} LLM calls")
    # LLM calls on entities the replay did not touch: the repeat refresh, plus any answer
    # for an untouched entity written after the full build
    touched = set(r1_users := seen) | set(
        replay.filter(pl.col("timestamp") <= t_replay)["user_id"].to_list()
    )
    after_build = KnowledgeStore(project.knowledge_store_url).answers(
        scenario="movies", status=None
    )
    created_late = after_build.filter(pl.col("as_of") > t0)
    stray = created_late.filter(~pl.col("entity_id").is_in(sorted(touched)))
    llm_calls_unchanged = r3.llm_calls + stray.height
    del r1_users, unchanged

    # -- AUC on the later weeks: refreshed vs frozen user knowledge ---------------------
    fresh = encode_knowledge(store.answers(scenario="movies"), encoder)
    model = result.model

    def test_auc(users_raw, items_raw) -> float:
        f = feats.with_knowledge(users_raw, items_raw)
        for name, tensor in f.knowledge_tensors().items():
            setattr(model, name, tensor)
        return evaluate(model, f.tensors("test"))[0]

    refreshed_users = set(replay["user_id"].to_list())
    n_rows = later.height
    n_ref = later.filter(pl.col("user_id").is_in(sorted(refreshed_users))).height
    auc_frozen = test_auc(raw.users, raw.items)
    auc_fresh = test_auc(fresh.users, fresh.items)
    print(
        f"AUC on {n_rows} rows of the {args.test_weeks} weeks after the replay "
        f"({n_ref} rows of refreshed users): frozen {auc_frozen:.4f}, refreshed {auc_fresh:.4f}"
    )

    # -- collective vs individual knowledge --------------------------------------------
    t = time.perf_counter()
    clusters = cluster_entities(
        ds0.interactions,
        n_components=16,
        user_clusters=args.user_clusters,
        item_clusters=args.item_clusters,
    )
    cluster_prompts = build_cluster_prompts(
        ds0.interactions, ds0.items, scenario, clusters.membership, clusters.clustering, t0
    )
    creports = answer_prompts(project, cluster_prompts, store=store, progress=False)
    coll_calls = sum(r.llm_calls for r in creports.values())
    contexts = pl.DataFrame(
        {
            "entity_type": [p.entity_type for p in prompts],
            "entity_id": [p.entity_id for p in prompts],
            "context_text": [p.context_text for p in prompts],
        }
    )
    members = member_answers(
        store.answers(scenario="movies").filter(pl.col("entity_id").str.starts_with("cluster:")),
        clusters.membership,
        clusters.clustering,
        {"user": "collective", "item": "collective"},
        contexts,
    )
    coll = encode_knowledge(members, encoder)
    coll_s = time.perf_counter() - t
    coll_result = train_ctr(
        feats.with_knowledge(coll.users, coll.items),
        "deepfm",
        adaptor_config=adaptor_config(project),
        seed=0,
    )
    factor = full_calls / max(coll_calls, 1)
    print(
        f"collective: {clusters.n_clusters('user')} user + {clusters.n_clusters('item')} item "
        f"clusters (SVD 16, explained variance {clusters.explained_variance:.2f}), {coll_calls} "
        f"LLM calls vs {full_calls} individual -> {factor:.1f}x fewer; generate+encode "
        f"{coll_s:.1f} s vs {timings['generate'] + timings['encode']:.1f} s"
    )
    print(
        f"AUC (deepfm + HEA adaptor, seed 0) on the same later weeks, frozen knowledge: "
        f"individual {auc_frozen:.4f}, collective {coll_result.test_auc:.4f}"
    )
    print(f"llm_call_reduction: {factor:.1f}x")
    print(f"llm_calls_unchanged: {llm_calls_unchanged} cost_ratio: {refresh_s / full_s:.2f}")


if __name__ == "__main__":
    main()
