"""The evaluation, by job (this module re-exports their public names):

- :mod:`kar.models.harness`: :func:`compare`, the experiment loop over backbones x arms x
  seeds, run as :class:`CompareSettings` says (the arms, the gate, warm starts);
- :mod:`kar.models.tuning`: the grid search on validation (:data:`TUNING_GRID`,
  :data:`KNOWLEDGE_GRID`, :func:`choose_config`, :func:`choose_training_config`);
- :mod:`kar.models.runlog`: the JSONL run log that makes an evaluation resumable
  (:class:`RunLog`, :data:`RESULT_SCHEMA`, :func:`result_row`, :func:`cold_slices`);
- :mod:`kar.models.report`: :func:`summarize`, :func:`headline_line`,
  :func:`markdown_table` and :func:`write_report` (markdown + PNG).
"""

from __future__ import annotations

from kar.models.harness import (
    CompareSettings,
    Comparison,
    compare,
    run_fingerprints,
)
from kar.models.report import (
    arm_means,
    headline,
    headline_line,
    markdown_table,
    summarize,
    with_ungated_rows,
    write_report,
)
from kar.models.runlog import (
    ARMS,
    BASELINE,
    RESULT_SCHEMA,
    SUMMARY_ARMS,
    UNGATED,
    RunLog,
    cold_slices,
    config_text,
    load_state,
    result_row,
    save_state,
)
from kar.models.tuning import (
    KNOWLEDGE_GRID,
    TUNING_GRID,
    TrainingChoice,
    best_trial,
    choose_config,
    choose_training_config,
    start_and_config,
)

__all__ = [
    "ARMS",
    "BASELINE",
    "KNOWLEDGE_GRID",
    "RESULT_SCHEMA",
    "SUMMARY_ARMS",
    "TUNING_GRID",
    "UNGATED",
    "CompareSettings",
    "Comparison",
    "RunLog",
    "TrainingChoice",
    "arm_means",
    "best_trial",
    "choose_config",
    "choose_training_config",
    "cold_slices",
    "compare",
    "config_text",
    "headline",
    "headline_line",
    "load_state",
    "markdown_table",
    "result_row",
    "run_fingerprints",
    "save_state",
    "start_and_config",
    "summarize",
    "with_ungated_rows",
    "write_report",
]
