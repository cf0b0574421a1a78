"""KVWindow: the vLLM backend queues only the requests its KV cache holds whole."""

from __future__ import annotations

from collections import deque

from kar.generation.vllm_backend import KVWindow


def test_admits_what_fits_and_more_as_requests_finish() -> None:
    window = KVWindow(blocks=10, block_size=16)
    todo = deque(["a", "b", "c", "d"])
    tokens = {"a": 64, "b": 40, "c": 33, "d": 16}.__getitem__  # 4, 3, 3, 1 blocks
    first = window.admit(todo, tokens)
    assert first == [("a", 4), ("b", 3), ("c", 3)] and list(todo) == ["d"]
    assert window.admit(todo, tokens) == []  # full: d waits
    window.release([3])  # b finished
    assert window.admit(todo, tokens) == [("d", 1)] and not todo


def test_a_request_bigger_than_the_cache_runs_alone() -> None:
    window = KVWindow(blocks=2, block_size=16)
    todo = deque(["huge", "small"])
    tokens = {"huge": 100, "small": 10}.__getitem__
    assert window.admit(todo, tokens) == [("huge", 7)]  # nothing in flight: it goes
    assert window.admit(todo, tokens) == []  # but nothing beside it
    window.release([7])
    assert window.admit(todo, tokens) == [("small", 1)]


def test_no_known_cache_size_admits_everything() -> None:
    window = KVWindow(blocks=None, block_size=16)
    todo = deque(range(5))
    assert [r for r, _ in window.admit(todo, lambda r: 1000)] == [0, 1, 2, 3, 4]
