"""Item and user texts stated from known facts, written as files ``kar knowledge import`` reads.

- :func:`demo_oracle_texts`: each demo film's HIDDEN traits (tone, acclaim, era, pace) in
  words. An oracle: the traits are what the demo's synthetic users' tastes are built on, so
  these texts carry exactly the information the simulation hides. They show what knowledge
  can do when it is right; they are not a result about any LLM.
- :func:`item_fact_texts` / :func:`user_fact_texts`: a dataset's own columns (genres, year,
  creator; age, gender, occupation) stated in words, e.g. for MovieLens. Honest: nothing
  outside the dataset; whatever lift they give is the text encoder's reading of public
  columns the CTR model may already see as ids.

Each function returns a frame ``entity_id, kind, text``; :func:`write_texts` saves it.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .demo import simulate_demo

TEXT_COLUMNS = ("entity_id", "kind", "text")
TONE_WORDS = {
    1: "bleak and grim",
    2: "dark",
    3: "bittersweet",
    4: "cheerful",
    5: "joyful and upbeat",
}
# worded so that the encoder tells the levels apart (ridge probe on MiniLM vectors of the
# sentence alone, held-out R^2: tone 0.95, acclaim 0.91, era 0.83, pace 0.75; docs/data.md)
ACCLAIM_WORDS = {
    1: "panned by critics",
    2: "poorly reviewed",
    3: "with mixed reviews",
    4: "highly praised",
    5: "an all-time masterpiece",
}


def _and(words: list[str]) -> str:
    """``["a", "b", "c"]`` -> ``"a, b and c"``."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _pace_word(pace: float) -> str:
    if pace > 0.25:
        return "fast-paced"
    if pace < -0.25:
        return "slow-paced"
    return "moderately paced"


def oracle_sentence(
    tone: int, acclaim: int, year: int | None, pace: float, genres: list[str]
) -> str:
    """``"A dark, slow-paced 1970s crime and drama film, an all-time masterpiece. Tone: ..."``"""
    era = f"{year // 10 * 10}s " if year is not None else ""
    kind = _and([g.lower() for g in genres]) or "feature"
    tone_word = TONE_WORDS[int(tone)]
    article = "An" if tone_word[0] in "aeiou" else "A"
    acclaim_word = ACCLAIM_WORDS[int(acclaim)]
    return (
        f"{article} {tone_word}, {_pace_word(pace)} {era}{kind} film, {acclaim_word}. "
        f"Tone: {tone_word}. Pace: {_pace_word(pace)}. Critical standing: {acclaim_word}."
    )


def demo_oracle_texts(n_items: int | None = 300) -> pl.DataFrame:
    """The demo films' hidden traits in words, one ``item`` row per film (an ORACLE).

    Items depend only on ``n_items`` (not on the users' seed), so the ids match every demo
    project written with the same ``n_items``.
    """
    items = simulate_demo(n_users=1, seed=0, n_items=n_items).items
    texts = [
        oracle_sentence(
            row["tone"], row["acclaim"], row["year"], row["pace"], row["genres"].split("|")
        )
        for row in items.iter_rows(named=True)
    ]
    return pl.DataFrame(
        {"entity_id": items["item_id"], "kind": ["item"] * items.height, "text": texts}
    )


def item_fact_texts(items: pl.DataFrame, noun: str = "film") -> pl.DataFrame:
    """Each item's own columns in words: ``"Toy Story is a 1995 animation, children's and
    comedy film."`` (plus ``" By <creator>."`` when the items table has one)."""
    texts = []
    for row in items.iter_rows(named=True):
        title = (row.get("title") or f"{noun} {row['item_id']}").strip()
        genres = [g.lower() for g in (row.get("genres") or [])]
        year = row.get("year")
        what = " ".join(part for part in (str(year) if year else "", _and(genres)) if part)
        text = f"{title} is a {what} {noun}." if what else f"{title} is a {noun}."
        if row.get("creator"):
            text += f" By {row['creator']}."
        texts.append(text)
    return pl.DataFrame(
        {
            "entity_id": items["item_id"].cast(pl.Utf8),
            "kind": ["item"] * items.height,
            "text": texts,
        }
    )


def user_fact_texts(users: pl.DataFrame, columns: list[str] | None = None) -> pl.DataFrame:
    """Each user's attribute columns in words: ``"A user with age 24, gender M, occupation
    technician."``; users with none of the columns filled are left out."""
    names = [c for c in (columns or users.columns) if c in users.columns and c != "user_id"]
    ids, texts = [], []
    for row in users.iter_rows(named=True):
        parts = [f"{c.replace('_', ' ')} {row[c]}" for c in names if row.get(c) not in (None, "")]
        if parts:
            ids.append(str(row["user_id"]))
            texts.append("A user with " + ", ".join(parts) + ".")
    return pl.DataFrame(
        {"entity_id": ids, "kind": ["user"] * len(ids), "text": texts},
        schema={"entity_id": pl.Utf8, "kind": pl.Utf8, "text": pl.Utf8},
    )


def write_texts(frame: pl.DataFrame, path: str | Path) -> Path:
    """Write an ``entity_id, kind, text`` frame as UTF-8 CSV (or Parquet for ``.parquet``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = frame.select(TEXT_COLUMNS)
    if path.suffix.lower() in {".parquet", ".pq"}:
        out.write_parquet(path)
    else:
        out.write_csv(path)
    return path


DEMO_VARIANTS = ("standard", "grounded", "oracle")
ORACLE_TEXTS_FILE = "item_texts.csv"


def write_demo_variant(data_dir: str | Path, variant: str) -> Path | None:
    """Turn a folder written by ``write_demo_dataset`` into a demo variant (ORACLE texts):

    ``grounded``: items.csv gains a ``description`` column, each film's hidden traits in
    words (the item-fact prompt quotes it); ``oracle``: the same, plus ``item_texts.csv``
    (entity_id, kind, text) to import as the item knowledge; its path is returned.
    ``standard``: nothing changes.
    """
    if variant not in DEMO_VARIANTS:
        raise ValueError(f"demo variant {variant!r}: expected one of {DEMO_VARIANTS}")
    if variant == "standard":
        return None
    items_csv = Path(data_dir) / "items.csv"
    items = pl.read_csv(items_csv, infer_schema=False)
    texts = demo_oracle_texts(n_items=items.height)
    described = items.join(
        texts.select("entity_id", pl.col("text").alias("description")),
        left_on="item_id",
        right_on="entity_id",
        how="left",
    )
    described.write_csv(items_csv)
    if variant == "grounded":
        return None
    return write_texts(texts, Path(data_dir) / ORACLE_TEXTS_FILE)
