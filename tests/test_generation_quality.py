"""Bad-answer detectors and the retry policy (no LLM needed)."""

from __future__ import annotations

import pytest

from kar.generation.quality import check_answer, is_refusal, is_repetitive
from kar.generation.runner import retry_params
from kar.records import GenerationOutput, SamplingParams

GOOD = (
    "Toy Story (1995) is a computer-animated comedy about toys that come to life when "
    "people leave the room. It was directed by John Lasseter and made by Pixar; Tom Hanks "
    "and Tim Allen voice the leads. Genres: animation, comedy, family."
)


def out(text: str, finish: str = "stop") -> GenerationOutput:
    return GenerationOutput(text=text, prompt_tokens=10, completion_tokens=5, finish_reason=finish)


def test_good_answer_passes() -> None:
    assert check_answer(out(GOOD)) is None


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_empty(text: str) -> None:
    assert check_answer(out(text)) == "empty"


@pytest.mark.parametrize(
    "text",
    [
        "I cannot provide information about this user.",
        "I'm sorry, but I can't help with that request.",
        "As an AI language model, I do not have personal preferences.",
    ],
)
def test_refusal(text: str) -> None:
    assert check_answer(out(text)) == "refusal"


def test_refusal_only_at_the_start() -> None:
    text = GOOD + " The hero says: I cannot leave Andy behind."
    assert not is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "The movie is a great movie. " * 12,  # looping sentence
        "Genre: comedy\n" * 6 + "Director: someone\n",  # the same line over and over
        "ha" * 200,  # no spaces, near-zero entropy
    ],
)
def test_repetition(text: str) -> None:
    assert is_repetitive(text)
    assert check_answer(out(text)) == "repetition"


def test_repetition_wins_over_truncation() -> None:
    assert check_answer(out("and then the story goes on " * 10, finish="length")) == "repetition"


def test_truncated() -> None:
    assert check_answer(out(GOOD[:80], finish="length")) == "truncated"
    assert check_answer(out(GOOD[:80], finish="stop")) is None


def test_retry_params_per_reason() -> None:
    base = SamplingParams(max_new_tokens=64, repetition_penalty=1.2, seed=7)
    assert retry_params(base, "truncated", 1).max_new_tokens == 128
    assert retry_params(base, "repetition", 1).repetition_penalty == pytest.approx(1.4)
    resampled = retry_params(base, "empty", 1)
    assert not resampled.greedy and resampled.seed == 8
    # every retry changes the call, so it is never a copy of the failed one
    for reason in ("truncated", "repetition", "empty", "refusal"):
        assert retry_params(base, reason, 1) != base


def test_trim_to_sentence_keeps_complete_sentences_only() -> None:
    from kar.generation.quality import trim_to_sentence

    assert trim_to_sentence("First point. Second point! Third is cut") == (
        "First point. Second point!"
    )
    assert trim_to_sentence('He said "go." Then the') == 'He said "go."'
    assert trim_to_sentence("no sentence end at all") is None
    # trimming that would drop more than half of the answer is refused
    assert trim_to_sentence("Short. " + "a very long unfinished clause " * 5) is None
