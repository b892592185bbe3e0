"""generate()'s keyword options become a validated Decoding and Sampling; unknown ones are refused."""

import pytest
import torch

import lensteer
from lensteer.steering.generation import Decoding, split_options
from lensteer.steering.sampling import Sampling


def test_options_split_into_decoding_and_sampling():
    decoding, sampling = split_options({"max_new_tokens": 5, "do_sample": True, "top_k": 3, "seed": 7})
    assert decoding == Decoding(max_new_tokens=5)
    assert sampling == Sampling(do_sample=True, top_k=3, seed=7)


def test_unknown_option_is_named(tiny_llama_bridge):
    with pytest.raises(lensteer.ConfigError, match=r"\['max_tokens'\].*max_new_tokens"):
        lensteer.generate(tiny_llama_bridge, ["hi"], max_tokens=3)


@pytest.mark.parametrize(
    ("bad", "word"),
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"batch_size": 0}, "batch_size")],
)
def test_decoding_refuses_bad_lengths(bad, word):
    with pytest.raises(lensteer.ConfigError, match=word):
        Decoding(**bad)


def test_sampling_checks_only_when_sampling():
    assert Sampling(temperature=0.0).generators([0, 1]) == []  # greedy: nothing drawn, nothing checked
    with pytest.raises(lensteer.ConfigError, match="top_p"):
        Sampling(do_sample=True, top_p=1.5)


def test_greedy_takes_the_argmax_and_sampling_follows_its_row_seeds():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert Sampling().next_tokens(logits, []).tolist() == [1, 0]
    s, rows = Sampling(do_sample=True, temperature=50.0, seed=11), logits.repeat(10, 1)  # near-uniform
    first = s.next_tokens(rows, s.generators(range(20)))
    assert torch.equal(first, s.next_tokens(rows, s.generators(range(20))))  # same rows, same draws
    assert not torch.equal(first, s.next_tokens(rows, s.generators(range(20, 40))))
