"""What one refresh did: events read, entities refreshed, LLM cost, time per stage."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RefreshReport:
    """One refresh run. ``seconds`` maps each stage to its wall time."""

    source: str
    run_id: int | None = None
    resumed: bool = False
    bootstrap: bool = False
    events: int = 0
    users: int = 0
    items: int = 0
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    flagged: int = 0
    offline_rows: int = 0
    online_rows: int = 0
    files: list[str] = field(default_factory=list)
    old_watermark: str | None = None
    new_watermark: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    # lineage: per entity type, entities per knowledge source (a cluster's id, an LLM, an import)
    sources: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": round(self.total_seconds, 3)}

    def summary(self) -> str:
        if self.bootstrap:
            return (
                f"{self.source}: first refresh, nothing recomputed; watermark set to "
                f"{self.new_watermark}"
            )
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        return (
            f"{self.source}{' (resumed)' if self.resumed else ''}: {self.events} events read; "
            f"{self.users} users and {self.items} new items refreshed; {self.llm_calls} LLM "
            f"calls, {self.prompt_tokens}+{self.completion_tokens} tokens; "
            f"{self.offline_rows} offline rows in {len(self.files)} new part file(s), "
            f"{self.online_rows} pushed online; watermark {self.old_watermark} -> "
            f"{self.new_watermark}; {stages}"
        )

    def save(self, directory: Path) -> Path:
        """Write ``refresh-<run>.json`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        name = f"refresh-{self.run_id:08d}.json" if self.run_id is not None else "refresh-none.json"
        path = directory / name
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path
