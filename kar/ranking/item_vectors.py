"""Item text vectors for semantic behaviour retrieval, from the project's embedding stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

    from kar.data.schema import Dataset
    from kar.project import ProjectFolder


def item_text_vectors(
    folder: ProjectFolder, dataset: Dataset, *, progress: bool = False
) -> pl.DataFrame:
    """(entity_id, vector) for every catalogue item: its text (:func:`item_texts_of`, with
    the knowledge store's item facts when the embedding stage uses them) encoded by the
    untuned embedder of kar.yaml's ``embedding`` section. The vectors are kept in the
    project's vector cache (by model and text hash, as the embedding stage keeps them), so
    a rerun only loads the model."""
    from kar.embedding.stage import base_embedder, item_texts_of
    from kar.encoding.vectors import vectors_frame

    texts = item_texts_of(folder, dataset)
    ids = sorted(texts)
    matrix = base_embedder(folder).embed([texts[i] for i in ids], progress=progress)
    return vectors_frame(ids, matrix)
