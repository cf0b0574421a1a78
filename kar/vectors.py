"""Validation of (entity_id, vector) frames, the shape every stage hands vectors on in."""

from __future__ import annotations

import numpy as np
import polars as pl

from kar.errors import DataValidationError


def vector_matrix(
    frame: pl.DataFrame, what: str, dim: int | None = None, allow_empty: bool = False
) -> tuple[list[str], np.ndarray]:
    """(ids, (n, d) float32 matrix) of an (entity_id, vector) frame.

    Raises DataValidationError naming the row and field for a missing column, a duplicate
    id, a null, a vector of another length (than the first, or ``dim``), or NaN/inf.
    """
    for col in ("entity_id", "vector"):
        if col not in frame.columns:
            raise DataValidationError(f"{what} knowledge frame has no column", field=col)
    if frame.height == 0:
        if allow_empty:
            return [], np.zeros((0, dim or 0), dtype=np.float32)
        raise DataValidationError(f"{what} knowledge frame is empty", field="vector")
    dup = frame["entity_id"].is_duplicated()
    if dup.any():
        row = int(dup.arg_true()[0])
        raise DataValidationError(
            f"{what} knowledge has duplicate entity_id {frame['entity_id'][row]!r}",
            row=row + 1,
            field="entity_id",
        )
    vec = frame["vector"]
    if isinstance(vec.dtype, pl.Array):
        vec = vec.arr.to_list()
    lengths = vec.list.len().fill_null(0)
    expected = dim if dim is not None else int(lengths[0])
    bad = (lengths != expected) | (lengths == 0)
    if bad.any():
        row = int(bad.arg_true()[0])
        raise DataValidationError(
            f"{what} vector of {frame['entity_id'][row]!r} has {lengths[row]} values, "
            f"expected {expected}",
            row=row + 1,
            field="vector",
        )
    matrix = np.asarray(vec.list.to_array(expected).to_numpy(), dtype=np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        row = int((~finite).nonzero()[0][0])
        raise DataValidationError(
            f"{what} vector of {frame['entity_id'][row]!r} has NaN/inf values",
            row=row + 1,
            field="vector",
        )
    return frame["entity_id"].cast(pl.Utf8).to_list(), matrix
