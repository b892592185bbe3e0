"""The decision contrast: the same question under an aligned vs a misaligning context, read at the last
token before the answer (where the model decides), and the answer stems it is built on."""

import pytest

import lensteer
from lensteer.locate.probing import answer_stem, contrast_prompts, decision_prompts


def test_decision_prompts_end_where_the_true_and_false_answers_part():
    data = lensteer.load_dataset("honesty").head(40)
    prompts = decision_prompts(data)
    for p, ex in zip(prompts, data, strict=True):
        stem = p.response or ""
        assert ex.aligned_response.startswith(stem) and ex.misaligned_response.startswith(stem)
        rest_a, rest_m = ex.aligned_response[len(stem) :].strip(), ex.misaligned_response[len(stem) :].strip()
        assert rest_a.split()[0] != rest_m.split()[0]  # the next word is the decision
    assert answer_stem("It is 206.", "It is 212.") == "It is"  # never a word cut in half
    assert answer_stem("Tokyo is the capital.", "Osaka is the capital.") is None  # the answer comes first


def test_the_decision_contrast_is_the_same_stem_under_the_two_contexts():
    data = lensteer.load_dataset("honesty").train.head(12)
    pos, neg, position = contrast_prompts(data, "decision", ("honest_fewshot", "lying_fewshot"))
    assert position == "last" and len(pos) == len(neg) == len(data.with_responses())
    honest, lying = data.context("honest_fewshot"), data.context("lying_fewshot")
    for p, n in zip(pos, neg, strict=True):
        assert p.user == n.user and p.response == n.response  # only the context differs
        assert p.history == honest.turns and n.history == lying.turns
    # the two contexts ask the same questions, in the same words but for the answers
    assert [t.content for t in honest.turns[::2]] == [t.content for t in lying.turns[::2]]
    assert all(a.content != b.content for a, b in zip(honest.turns[1::2], lying.turns[1::2], strict=True))
    with pytest.raises(lensteer.ConfigError, match="needs two contexts"):
        contrast_prompts(data, "decision")
