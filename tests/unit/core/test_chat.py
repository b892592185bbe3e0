import pytest
import torch

import lensteer
from lensteer.core.chat import left_pad, render_chat
from lensteer.errors import ConfigError, DataError


def _decode(tok, ids):
    return "".join(tok.convert_ids_to_tokens(ids.tolist()))


def test_spans_locate_instruction_post_instruction_and_response(tiny_tokenizer):
    p = lensteer.ChatPrompt(user="How do I bake bread?", system="Be brief.", response="Mix flour.")
    tp = lensteer.core.tokenize_prompt(tiny_tokenizer, p)
    tok = tiny_tokenizer
    assert _decode(tok, tp.tokens[slice(*tp.instruction)]) == "How do I bake bread?"
    assert _decode(tok, tp.tokens[slice(*tp.post_instruction)]) == "</s><|assistant|>"
    assert _decode(tok, tp.tokens[slice(*tp.response)]) == "Mix flour."
    assert tp.response[1] == tp.n_tokens


def test_multi_turn_history_marks_the_last_user_turn(tiny_tokenizer):
    hist = (
        lensteer.core.Turn(role="user", content="Hi"),
        lensteer.core.Turn(role="assistant", content="Hello"),
    )
    tp = lensteer.core.tokenize_prompt(tiny_tokenizer, lensteer.ChatPrompt(user="Hi", history=hist))
    text, (u0, _), _ = render_chat(tiny_tokenizer, lensteer.ChatPrompt(user="Hi", history=hist))
    assert text.count("Hi") == 2 and u0 == text.rfind("Hi")
    assert _decode(tiny_tokenizer, tp.tokens[slice(*tp.instruction)]) == "Hi"
    assert tp.response == (tp.n_tokens, tp.n_tokens)


def test_no_doubled_bos_and_bos_added_when_template_lacks_it(tiny_tokenizer):
    tp = lensteer.core.tokenize_prompt(tiny_tokenizer, "hello")
    assert tp.tokens[0] == tiny_tokenizer.bos_token_id and tp.tokens[1] != tiny_tokenizer.bos_token_id
    raw = lensteer.core.tokenize_prompt(tiny_tokenizer, "hello", chat=False)
    assert raw.tokens[0] == tiny_tokenizer.bos_token_id and raw.n_tokens == 6


def test_left_pad_puts_prompts_flush_right_with_mask(tiny_tokenizer):
    batch = lensteer.core.tokenize_batch(tiny_tokenizer, ["a", "a longer prompt"])
    assert batch.tokens.shape[0] == 2 and batch.attention_mask[0].sum() == batch.prompts[0].n_tokens
    assert torch.equal(batch.tokens[0, batch.pad_lengths[0] :], batch.prompts[0].tokens)
    assert batch.attention_mask[0, : batch.pad_lengths[0]].sum() == 0
    assert batch.position_ids[0, -1] == batch.prompts[0].n_tokens - 1


@pytest.mark.parametrize(
    ("make", "err", "match"),
    [
        (lambda: lensteer.ChatPrompt(user="  "), DataError, "non-empty user message"),
        (lambda: lensteer.core.Turn(role="bot", content="x"), ConfigError, "role 'bot'"),
        (
            lambda: lensteer.ChatPrompt(user="x", history=(lensteer.core.Turn(role="system", content="s"),)),
            ConfigError,
            "system=",
        ),
        (lambda: left_pad([], 0), DataError, "empty list"),
    ],
)
def test_bad_prompts_raise(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_single_string_instead_of_list_is_rejected(tiny_tokenizer):
    with pytest.raises(DataError, match="list of prompts"):
        lensteer.core.tokenize_batch(tiny_tokenizer, "oops")


def test_first_token_id_skips_special_tokens(tiny_tokenizer):
    assert lensteer.core.first_token_id(tiny_tokenizer, "Sure") == tiny_tokenizer.convert_tokens_to_ids("S")
    with pytest.raises(DataError, match="tokenizes to nothing"):
        lensteer.core.first_token_id(tiny_tokenizer, "")
