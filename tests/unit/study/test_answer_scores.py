"""A condition's answers are scored on one teacher-forced pass, with the numbers of the separate passes."""

from dataclasses import replace

import pytest
import torch

import lensteer
from lensteer.evaluate.metrics import response_perplexity
from lensteer.steering.calibration import sequence_kl
from lensteer.study import answer_scores as module
from lensteer.study.answer_scores import answer_scores, scored_text

SYSTEM = "You are a terse assistant who answers every question in one short line, and never more."
USERS = ["hi", "a much longer question, to force some left padding here", "mid length one", "why?", "ok"]


def _steering(d: int) -> lensteer.Steering:
    unit = torch.randn(d, generator=torch.Generator().manual_seed(4))
    return lensteer.Steering(unit=unit / unit.norm(), layers=(1,), mode="add", scale=3.0)


def _text(model, tokens: torch.Tensor) -> str:
    return "".join(model.tokenizer.convert_ids_to_tokens(tokens.tolist()))


@pytest.mark.parametrize("steered", [True, False])
def test_one_pass_gives_the_rollout_kl_and_perplexity_of_two_passes(tiny_llama_bridge, monkeypatch, steered):
    model = tiny_llama_bridge
    chats = [lensteer.ChatPrompt(user=u, system=SYSTEM) for u in USERS]
    steering = _steering(model.cfg.d_model) if steered else None
    gen = lensteer.generate(model, chats, steering=steering, max_new_tokens=6)
    assert all(len(t) > 0 for t in gen.tokens)
    # the texts as the embedded model's tokenizer decodes them: written back, they are the decoded tokens
    # (the tiny tokenizer's decode puts a space between characters)
    gen = replace(gen, texts=tuple(_text(model, t) for t in gen.tokens))
    # an answer that ended at once (scored as "."), and one whose text is not its tokens: both the old way
    empty = torch.zeros(0, dtype=torch.long)
    gen = replace(
        gen,
        texts=(gen.texts[0], "", "quite another text", *gen.texts[3:]),
        tokens=(gen.tokens[0], empty, *gen.tokens[2:]),
    )
    alone: list[int] = []
    real = module.response_logprob
    monkeypatch.setattr(
        module, "response_logprob", lambda m, rows, **k: alone.append(len(rows)) or real(m, rows, **k)
    )
    got = answer_scores(model, steering, chats, gen, batch_size=2)
    assert alone == [2]  # every other answer was scored on the pass
    monkeypatch.undo()
    # the reference: the perplexity of the texts written back through the template, the KL on its own pass
    old_ppl = response_perplexity(model, chats, [scored_text(t) for t in gen.texts], batch_size=2).corpus
    assert got.perplexity == pytest.approx(old_ppl, rel=1e-5)
    if steered:
        assert steering is not None
        old_kl = sequence_kl(model, steering, gen.prompt_tokens, gen.tokens, batch_size=2)
        assert got.kl_rollout == pytest.approx(old_kl, rel=1e-9) and old_kl > 1e-4
    else:
        assert got.kl_rollout is None


def test_answers_that_all_ended_at_once_have_no_rollout_kl_and_the_perplexity_of_dots(tiny_llama_bridge):
    model = tiny_llama_bridge
    chats = [lensteer.ChatPrompt(user=u) for u in USERS[:2]]
    steering = _steering(model.cfg.d_model)
    gen = lensteer.generate(model, chats, steering=steering, max_new_tokens=2)
    empty = torch.zeros(0, dtype=torch.long)
    gen = replace(gen, texts=("", " "), tokens=(empty, empty))
    got = answer_scores(model, steering, chats, gen)
    assert got.kl_rollout is None
    assert got.perplexity == pytest.approx(response_perplexity(model, chats, [".", "."]).corpus, rel=1e-5)
