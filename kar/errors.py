"""Errors raised by kar. Every error names what the user must look at."""

from __future__ import annotations

from pathlib import Path


class KarError(Exception):
    """Base class for errors a user can act on."""


class DataValidationError(KarError):
    """Input data is unusable: names the file, the row (1-based, header excluded) and the field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        where = ", ".join(
            part
            for part in (
                f"file {self.file}" if self.file else "",
                f"row {row}" if row is not None else "",
                f"field {field!r}" if field else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(KarError):
    """A configuration file or option is invalid."""


class GenerationError(KarError):
    """An LLM backend failed in a way a retry will not fix."""


class FeatureStoreError(KarError):
    """Publishing to or reading from the Feast feature store failed."""


class KnowledgeStoreError(KarError):
    """The knowledge store (or another of kar's SQLite files) is damaged or stays locked."""
