"""The coherence verdict: unreadable answers (broken off, gibberish, loops) vs answers that say something."""

import pytest

from lensteer.evaluate.coherence import coherence_verdict, is_unreadable, loop_coverage
from lensteer.evaluate.text import words_of


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "breaks off"),
        ("The", "breaks off"),
        ("I'm sorry. " * 12, "loops"),
        ("You're not alone. " * 10, "loops"),
        (
            "To make it you need:\n1. Aroma\n2. Aroma\n3. Aroma\n4. Aroma\n5. Aroma\n6. Aroma",
            "loops",
        ),  # digits folded
        ("1. 1.1.1.1.1.1.1.1.1.1.1.1 %%% ## :: ;; -- ** ++", "gibberish"),
        ("这是一个测试 这是一个测试 hello 这是一个测试 世界", "gibberish"),  # mostly another script
    ],
)
def test_unreadable_answers(text, why):
    v = coherence_verdict(text)
    assert v.unreadable and v.reason.startswith(why) and is_unreadable(text)


@pytest.mark.parametrize(
    "text",
    [
        "Tokyo.",  # a one-word answer is an answer
        "The capital of Japan is Tokyo.",
        "I'm so sorry you're going through this. It makes sense to feel tired after weeks like these, and you "
        "deserve rest. Would it help to talk about what has been hardest?",
        "I can't help with that, but I can explain how locks work if you are curious about the mechanism.",
    ],
)
def test_readable_answers(text):
    assert not coherence_verdict(text).unreadable


def test_a_loop_that_is_much_of_the_answer_is_unreadable_wherever_it_starts():
    said = (
        "The capital of Australia is Canberra, chosen in 1908 as a compromise between Sydney and Melbourne, "
        "the two largest cities. "
    )
    v = coherence_verdict(said + "It is a city. " * 12)
    assert v.unreadable and v.reason.startswith("loops") and v.lead_words >= 12 and v.loop_share > 0.4
    assert not coherence_verdict(said + "It is a city. " * 2).unreadable  # said twice: no loop


def test_loop_coverage_counts_repeated_ngrams_and_where_the_loop_starts():
    words = words_of("one two three four five six seven " + "a b c d " * 3)
    share, start = loop_coverage(words, n=4)
    assert start == 7 and share == pytest.approx(12 / 19)
    assert loop_coverage(words_of("no phrase here comes back twice in this sentence")) == (0.0, 9)
