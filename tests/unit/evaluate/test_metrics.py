import math

import pytest
import torch
from builders import write_jsonl

import lensteer
from lensteer.core.chat import ChatPrompt, tokenize_prompt
from lensteer.core.forward import mean_token_kl
from lensteer.core.stats import rate_with_ci
from lensteer.errors import ConfigError, DataError
from lensteer.evaluate.capability import MCItem, load_mc_items, mc_accuracy
from lensteer.evaluate.metrics import over_refusal_rate, response_perplexity
from lensteer.evaluate.repetition import (
    conversation_repetition,
    distinct_n,
    rep_n,
    repetition_report,
)

# ------------------------------------------------------------------------------------------ KL


def test_mean_token_kl_matches_a_hand_computation():
    # position 0: base p = (1/2, 1/2), steered q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3)
    # position 1: identical distributions: KL = 0; position 2 is masked out (would be large)
    base = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.99, 0.01]]]))
    steered = (
        torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1], [0.01, 0.99]]])) + 3.0
    )  # logits shift is irrelevant
    mask = torch.tensor([[True, True, False]])
    expected = (0.5 * math.log(2) + 0.5 * math.log(2 / 3) + 0.0) / 2
    assert mean_token_kl(steered, base, mask) == pytest.approx(expected, abs=1e-7)
    # direction: KL(base || steered), not the reverse
    reverse = (0.25 * math.log(0.5) + 0.75 * math.log(1.5)) / 2
    assert mean_token_kl(base, steered, mask) == pytest.approx(reverse, abs=1e-7)
    assert mean_token_kl(base, base, torch.ones(1, 3, dtype=torch.long)) == pytest.approx(0.0, abs=1e-12)


def test_mean_token_kl_rejects_bad_shapes_and_empty_masks():
    from jaxtyping import TypeCheckError

    x = torch.zeros(2, 3, 5)
    # the test run type-checks shapes first (jaxtyping); without it, lensteer's own check answers
    with pytest.raises((ConfigError, TypeCheckError), match="one shape|base_logits"):
        mean_token_kl(x, torch.zeros(2, 3, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises((ConfigError, TypeCheckError), match="mask"):
        mean_token_kl(x, x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(DataError, match="no position"):
        mean_token_kl(x, x, torch.zeros(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------------------------- perplexity


def test_response_perplexity_matches_a_full_forward(tiny_llama_bridge):
    model = tiny_llama_bridge
    prompts, responses = ["hello there", "a b c"], ["hi!", "d e f g"]
    ppl = response_perplexity(model, prompts, responses)
    nll, count = [], []
    for p, r in zip(prompts, responses, strict=True):
        tp = tokenize_prompt(model, ChatPrompt(user=p, response=r))
        with torch.inference_mode():
            logp = torch.log_softmax(model(tp.tokens[None]).float(), dim=-1)[0]
        r0, r1 = tp.response
        lp = logp[r0 - 1 : r1 - 1].gather(-1, tp.tokens[r0:r1, None])[:, 0]
        nll.append(-lp.sum())
        count.append(r1 - r0)
    assert ppl.n_tokens.tolist() == count == [3, 7]  # character tokenizer
    expected = torch.exp(torch.stack(nll) / torch.tensor(count))
    torch.testing.assert_close(ppl.per_response, expected, rtol=1e-4, atol=1e-4)
    assert ppl.corpus == pytest.approx(float(torch.exp(torch.stack(nll).sum() / sum(count))), rel=1e-4)
    with pytest.raises(DataError, match="empty"):
        response_perplexity(model, ["x"], ["  "])
    with pytest.raises(DataError, match="equal"):
        response_perplexity(model, ["x"], ["a", "b"])


# ---------------------------------------------------------------------------------- repetition


def test_rep_n_and_distinct_n_by_hand():
    assert rep_n("the cat the cat the cat", 2) == pytest.approx(1 - 2 / 5)  # bigrams: 5, unique: 2
    assert rep_n("One two three four", 2) == 0.0
    assert rep_n("short", 4) == 0.0
    assert rep_n("Go, go GO!", 1) == pytest.approx(2 / 3)  # word level, case and punctuation ignored
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)  # ab bc ab bd
    assert distinct_n(["x"], 2) == 0.0
    with pytest.raises(ConfigError, match=">= 1"):
        rep_n("a", 0)
    with pytest.raises(DataError, match="list"):
        distinct_n("a b", 2)


def test_repetition_report_counts_loops():
    loop = "I am fine. " * 6  # rep-4 well above 0.2
    report = repetition_report([loop, "A perfectly ordinary sentence with no repeats at all."])
    assert report.loop_share == 0.5 and report.n == 2
    assert report.rep4 == pytest.approx(rep_n(loop, 4) / 2)
    assert set(report.to_dict()) == {"rep2", "rep4", "distinct2", "loop_share", "n"}


def test_conversation_repetition_per_turn_and_against_history():
    conversations = [
        ["the quick brown fox jumps", "the quick brown fox jumps again", "new words only here now"],
        ["one two three four five", "six seven eight nine ten"],
    ]
    turns = conversation_repetition(conversations)
    assert [t.turn for t in turns] == [0, 1, 2]
    assert [t.report.n for t in turns] == [2, 2, 1]
    assert turns[0].rep4_history == 0.0
    # turn 1: conv 0 repeats 2 of its 3 4-grams from turn 0; conv 1 repeats none
    assert turns[1].rep4_history == pytest.approx((2 / 3 + 0) / 2)
    assert turns[2].rep4_history == 0.0
    with pytest.raises(DataError, match="each a list"):
        conversation_repetition(["not", "nested"])


# -------------------------------------------------------------------------------- rates, refusal


def test_rate_with_ci_and_over_refusal():
    rate = rate_with_ci([True] * 3 + [False] * 7, seed=1)
    assert rate.value == pytest.approx(0.3) and rate.n == 10
    assert 0.0 <= rate.low < 0.3 < rate.high <= 1.0
    assert rate_with_ci([True] * 5).to_dict() == {"value": 1.0, "low": 1.0, "high": 1.0, "n": 5}
    harmless = [
        "Here is a recipe for bread.",
        "I'm sorry, I can't help with that.",
        "Sure! Step one is easy.",
    ]
    assert over_refusal_rate(harmless).value == pytest.approx(1 / 3)
    assert over_refusal_rate(harmless, refused=lambda t: "bread" in t).value == pytest.approx(1 / 3)
    with pytest.raises(DataError):
        rate_with_ci([])


# ---------------------------------------------------------------------------------- capability


def test_bundled_mc_set_is_varied_and_well_formed():
    items = load_mc_items()
    assert len(items) >= 100 and len({it.id for it in items}) == len(items)
    cats = {it.category for it in items}
    assert cats == {"arithmetic", "science", "geography", "word_meaning", "common_sense"}
    assert all(len(it.options) == 4 and len(set(it.options)) == 4 for it in items)
    positions = [it.answer for it in items]
    assert all(positions.count(k) >= len(items) // 5 for k in range(4))  # correct answers are spread out


def test_mc_file_errors_name_the_line(tmp_path):
    bad = write_jsonl(
        tmp_path / "mc.jsonl", [{"id": "a", "question": "q", "options": ["x", "y"], "answer": 2}]
    )
    with pytest.raises(DataError, match="line 1: answer 2"):
        load_mc_items(bad)
    missing = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "options": ["x", "y"], "answer": 0}])
    with pytest.raises(DataError, match="line 1: needs"):
        load_mc_items(missing)


def test_mc_accuracy_picks_the_option_with_the_best_mean_logprob(tiny_llama_bridge):
    items = [
        MCItem(id="a", category="c", question="abc", options=("d", "xyz", "q"), answer=0),
        MCItem(id="b", category="k", question="hello", options=("world", "w"), answer=1),
    ]
    result = mc_accuracy(tiny_llama_bridge, items)
    expected = lensteer.core.forward.response_logprob(
        tiny_llama_bridge, [ChatPrompt(user=it.question, response=o) for it in items for o in it.options]
    )
    flat = [v for row in result.option_logprobs for v in row]
    torch.testing.assert_close(torch.tensor(flat), expected, rtol=1e-5, atol=1e-5)
    right = [
        max(range(len(r)), key=r.__getitem__) == it.answer
        for it, r in zip(items, result.option_logprobs, strict=True)
    ]
    assert list(result.correct) == right and result.accuracy == sum(right) / 2
    assert result.chance == pytest.approx((1 / 3 + 1 / 2) / 2) and set(result.by_category) == {"c", "k"}


def test_paragraphs_cover_every_topic_first_and_cross_entropy_is_the_mean_token_loss(tiny_llama_bridge):
    import json

    from lensteer.core.bundled import bundled_dir
    from lensteer.evaluate.capability import load_paragraphs, text_cross_entropy

    rows = [
        json.loads(line) for line in (bundled_dir("capability") / "paragraphs.jsonl").read_text().splitlines()
    ]
    topics = {r["text"]: r["topic"] for r in rows}
    texts = load_paragraphs()
    assert len(texts) == len(rows) >= 50
    assert len({topics[t] for t in texts[:12]}) == 12  # the first 12 are one per topic
    short = ["hello there friend", "a b c d e"]
    ce = text_cross_entropy(tiny_llama_bridge, short)
    by_hand, count = 0.0, 0
    for text in short:
        tokens = lensteer.core.tokenize_prompt(tiny_llama_bridge, text, chat=False).tokens[None]
        with torch.inference_mode():
            logits = tiny_llama_bridge(tokens)[0, :-1]
        by_hand += float(torch.nn.functional.cross_entropy(logits, tokens[0, 1:], reduction="sum"))
        count += tokens.shape[1] - 1
    assert ce == pytest.approx(by_hand / count, rel=1e-4)


@pytest.mark.parametrize("steered", [False, True])
def test_mc_accuracy_computes_each_question_once_with_the_scores_of_one_pass_per_option(
    tiny_llama_bridge, monkeypatch, steered
):
    import lensteer.steering.prefix as prefix_module
    from lensteer.core.forward import response_logprob
    from lensteer.steering import Steering, Window

    seen: list[int] = []  # the shared prefixes run once (a spy)
    real = prefix_module.prefill_shared_prefix
    monkeypatch.setattr(
        prefix_module, "prefill_shared_prefix", lambda *a: seen.append(a[3].length) or real(*a)
    )
    unit = torch.randn(tiny_llama_bridge.cfg.d_model, generator=torch.Generator().manual_seed(3))
    steering = Steering(
        unit=unit / unit.norm(), layers=(1,), mode="add", scale=4.0, positions=Window(1, None)
    )
    system = "You answer each question with the single best option, and nothing else at all."
    items = [
        MCItem(
            id="a", category="c", question="Which is a colour?", options=("red", "really red", "re"), answer=0
        ),
        MCItem(
            id="b", category="k", question="What is two plus two?", options=("four", "4", "five"), answer=1
        ),
    ]
    result = mc_accuracy(tiny_llama_bridge, items, system=system, steering=steering if steered else None)
    chats = [ChatPrompt(user=it.question, response=o, system=system) for it in items for o in it.options]
    if steered:  # the reference: every option with its question, through the bridge under steer()
        with lensteer.steer(tiny_llama_bridge, steering):
            expected = response_logprob(tiny_llama_bridge, chats)
        unsteered = response_logprob(tiny_llama_bridge, chats)
        assert (expected - unsteered).abs().max() > 1e-2  # the steering changes the scores it is tested on
    else:
        expected = response_logprob(tiny_llama_bridge, chats)
    flat = torch.tensor([v for row in result.option_logprobs for v in row])
    torch.testing.assert_close(flat, expected, rtol=1e-5, atol=1e-5)
    questions = [tokenize_prompt(tiny_llama_bridge, c) for c in chats[::3]]
    # each question once, up to the token that predicts the first option token (options "re"/"red" start alike)
    assert seen == [q.response[0] - 1 for q in questions]
