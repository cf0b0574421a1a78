"""The table of benchmarks/embeddings.py: every registered row is printed with all its
columns, skipped parts are listed, the table still prints when a part fails, and the last
line compares the best text method (by valid R@10) with SASRec. (The script itself runs
for about 40 minutes; ``--quick`` is its smoke run.)"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from kar.embedding import evaluate as ev

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "embeddings.py"


@pytest.fixture(scope="module")
def bench_module():
    spec = importlib.util.spec_from_file_location("bench_embeddings", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def metrics(r10: float, n: int = 100) -> ev.Metrics:
    return ev.Metrics(r10, 2 * r10, r10 / 2, n)


def bench(module, keys: list[tuple[str, str, float, float]]):
    args = argparse.Namespace(only="", quick=False)
    b = module.Bench(args, module.Clock(), None, [], {}, None, None, [])
    for key, kind, valid, test in keys:
        row = module.Row(f"row {key}", "notes", metrics(test), metrics(test / 4, 5), kind, valid)
        b.add(key, row)
    return b


ROWS = [
    ("pop", "id", 0.05, 0.05),
    ("als", "id", 0.10, 0.10),
    ("raw_minilm", "text", 0.02, 0.02),
    ("tuned_minilm", "text", 0.03, 0.03),
    ("shuffled", "control", 0.01, 0.01),
    ("tower", "text", 0.09, 0.09),
    ("tower_raw", "text", 0.10, 0.10),
    ("said", "text", 0.01, 0.01),
    ("said_tower", "text", 0.02, 0.02),
    ("sasrec", "id", 0.14, 0.14),
    ("sasrec_minilm", "text", 0.15, 0.147),
    ("sasrec_said", "text", 0.13, 0.13),
    ("sasrec_shuffled", "control", 0.16, 0.16),
]


def table_lines(out: str) -> list[str]:
    """The table's header and rows (not the separator)."""
    lines = out.splitlines()
    return [x for x in lines if x.startswith("| ") and not x.startswith("| ---")]


def test_every_row_is_printed_with_all_columns_and_the_last_line(bench_module, capsys) -> None:
    b = bench(bench_module, ROWS)
    b.skip("(x) something", "not available here")
    capsys.readouterr()
    bench_module.print_table(b, "", 1.0)
    out = capsys.readouterr().out
    lines = table_lines(out)
    assert len(lines) == 1 + len(ROWS) + 1  # header, rows, skipped
    assert all(line.count("|") == 11 for line in lines)  # 10 columns
    for (key, *_), line in zip(ROWS, lines[1:], strict=False):
        assert line.startswith(f"| row {key} | notes |")
    assert lines[-1].startswith("| (x) something | skipped: not available here |")
    # the control is never the best text method, however high its valid score
    assert out.rstrip().splitlines()[-1] == "best_text_vs_sasrec_r10: 1.05 cold_recall10: 0.04"


def test_a_row_key_registered_twice_is_refused(bench_module) -> None:
    b = bench(bench_module, ROWS[:1])
    with pytest.raises(ValueError, match="twice"):
        b.add("pop", b.rows["pop"])


def test_the_table_still_prints_when_a_part_fails(bench_module, capsys, monkeypatch) -> None:
    def fail(b) -> str:
        b.add("pop", bench(bench_module, ROWS[:1]).rows["pop"])
        raise RuntimeError("boom")

    b = bench(bench_module, [])
    monkeypatch.setattr(bench_module, "parse_args", lambda: b.args)
    monkeypatch.setattr(bench_module, "load_bench", lambda args, clock: b)
    monkeypatch.setattr(bench_module, "run_parts", fail)
    with pytest.raises(RuntimeError, match="boom"):
        bench_module.main()
    out = capsys.readouterr().out
    assert "INCOMPLETE: stopped by RuntimeError: boom" in out
    assert len(table_lines(out)) == 2
    assert out.rstrip().endswith("best_text_vs_sasrec_r10: nan cold_recall10: nan")


def test_quick_fills_only_the_flags_left_at_their_default(bench_module, monkeypatch) -> None:
    argv = ["embeddings.py", "--quick", "--tune-seeds", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    args = bench_module.parse_args()
    assert args.tune_seeds == 2  # given explicitly
    for name, value in bench_module.QUICK.items():
        if name != "tune_seeds":
            assert getattr(args, name) == value
    assert np.isclose(args.tower_samples, 2000)
