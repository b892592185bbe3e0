import pytest
import torch
from builders import random_unit

import lensteer
from lensteer.errors import DataError, HookSiteError


def test_shapes_for_each_position_selector(tiny_llama_bridge):
    prompts = [
        lensteer.ChatPrompt(user="hi there", response="ok"),
        lensteer.ChatPrompt(user="a much longer one", response="fine then"),
    ]
    d = tiny_llama_bridge.cfg.d_model
    assert lensteer.collect_activations(tiny_llama_bridge, prompts).shape == (2, 2, d)
    assert lensteer.collect_activations(
        tiny_llama_bridge, prompts, layers=[1], position="response_mean"
    ).shape == (2, 1, d)
    assert lensteer.collect_activations(
        tiny_llama_bridge, prompts, layers=[0], position="post_instruction"
    ).shape == (2, 1, 2, d)
    assert lensteer.collect_activations(tiny_llama_bridge, prompts, position=[0, -1]).shape == (2, 2, 2, d)
    assert lensteer.collect_activations(tiny_llama_bridge, prompts, position=3).shape == (2, 2, d)


def test_result_is_cpu_float32_and_matches_run_with_cache(tiny_llama_bridge):
    acts = lensteer.collect_activations(tiny_llama_bridge, ["hello"], layers=[0, 1], site="resid_mid")
    assert acts.dtype == torch.float32 and acts.device.type == "cpu"
    tokens = lensteer.core.tokenize_prompt(tiny_llama_bridge, "hello").tokens[None]
    _, cache = tiny_llama_bridge.run_with_cache(tokens, names_filter=lambda n: "hook_resid_mid" in n)
    for col, layer in enumerate([0, 1]):
        assert torch.allclose(acts[0, col], cache[f"blocks.{layer}.hook_resid_mid"][0, -1], atol=1e-6)


@pytest.mark.parametrize("position", ["last", "instruction_mean", "response_mean", [1, -2]])
def test_batched_equals_one_at_a_time_with_padding(tiny_llama_bridge, position):
    prompts = [
        lensteer.ChatPrompt(user=u, response=r)
        for u, r in [
            ("hi", "yes"),
            ("a considerably longer question here", "no way"),
            ("mid size q", "maybe so"),
        ]
    ]
    batched = lensteer.collect_activations(tiny_llama_bridge, prompts, position=position, batch_size=3)
    single = torch.cat(
        [lensteer.collect_activations(tiny_llama_bridge, [p], position=position) for p in prompts]
    )
    assert torch.allclose(batched, single, atol=1e-5)


def test_mean_positions_average_the_right_tokens(tiny_llama_bridge):
    p = lensteer.ChatPrompt(user="abc", response="xyz")
    tp = lensteer.core.tokenize_prompt(tiny_llama_bridge, p)
    every = lensteer.collect_activations(
        tiny_llama_bridge, [p], layers=[1], position=list(range(tp.n_tokens))
    )
    mean = lensteer.collect_activations(tiny_llama_bridge, [p], layers=[1], position="response_mean")
    assert torch.allclose(mean[0, 0], every[0, 0, slice(*tp.response)].mean(0), atol=1e-6)


def test_token_input_on_native_bridge_and_negative_layers(tiny_bridge):
    tokens = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(0))
    acts = lensteer.collect_activations(tiny_bridge, tokens, layers=[-1, 0])
    _, cache = tiny_bridge.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert torch.allclose(acts[:, 0], cache["blocks.3.hook_resid_post"][:, -1], atol=1e-5)
    assert torch.allclose(acts[:, 1], cache["blocks.0.hook_resid_post"][:, -1], atol=1e-5)


def test_forward_stops_after_last_requested_layer(tiny_bridge):
    fired = []
    hooks = [(f"blocks.{i}.hook_resid_post", lambda x, hook, i=i: fired.append(i)) for i in range(4)]
    with tiny_bridge.hooks(fwd_hooks=hooks):
        lensteer.collect_activations(tiny_bridge, torch.zeros(1, 4, dtype=torch.long), layers=[1])
    assert fired == [0, 1]


def test_planted_direction_is_recovered_by_difference_of_means(tiny_bridge):
    """Plant a unit vector in layer 1's residual stream for one class and recover it at layer 1."""
    d = tiny_bridge.cfg.d_model
    u = random_unit(d, seed=7)
    g = torch.Generator().manual_seed(1)
    pos_tokens, neg_tokens = (
        torch.randint(0, 64, (128, 6), generator=g),
        torch.randint(0, 64, (128, 6), generator=g),
    )

    def plant(resid, hook):
        return resid + 8.0 * u

    with tiny_bridge.hooks(fwd_hooks=[("blocks.1.hook_resid_post", plant)]):
        pos = lensteer.collect_activations(tiny_bridge, pos_tokens, layers=[0, 1])
    neg = lensteer.collect_activations(tiny_bridge, neg_tokens, layers=[0, 1])
    found = lensteer.diff_of_means(pos[:, 1], neg[:, 1], layer=1)
    assert found.cosine(lensteer.Direction(unit=u, layer=1)) > 0.99
    before = lensteer.diff_of_means(pos[:, 0], neg[:, 0], layer=0)
    assert abs(before.cosine(lensteer.Direction(unit=u, layer=1))) < 0.6  # nothing planted before layer 1
    assert found.project(pos[:, 1]).mean() > found.project(neg[:, 1]).mean()  # sign: positive projects higher


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (
            {"site": "resid_middle"},
            HookSiteError,
            "unknown hook site 'resid_middle'; allowed sites: resid_pre",
        ),
        (
            {"layers": [2]},
            HookSiteError,
            r"layer 2 is out of range for this model \(n_layers=2\); valid layers are 0..1 or -2..-1",
        ),
        ({"layers": [0, -2]}, HookSiteError, "same layer twice"),
        ({"layers": []}, HookSiteError, "layers is empty"),
        ({"position": "first"}, HookSiteError, "unknown position 'first'"),
        ({"position": 99}, HookSiteError, "position 99 does not exist in prompt 0"),
        ({"position": "response_mean"}, HookSiteError, "prompt 0 has no response tokens"),
        ({"batch_size": 0}, lensteer.ConfigError, "batch_size must be >= 1"),
    ],
)
def test_bad_arguments_raise_clear_errors_and_leave_no_hooks(tiny_llama_bridge, kwargs, err, match):
    with pytest.raises(err, match=match):
        lensteer.collect_activations(tiny_llama_bridge, ["hi", "hello"], **kwargs)


def test_empty_prompt_list_and_train_mode(tiny_llama_bridge, tiny_bridge):
    with pytest.raises(DataError, match="prompt list is empty"):
        lensteer.collect_activations(tiny_llama_bridge, [])
    tiny_bridge.train()
    try:
        with pytest.raises(lensteer.ConfigError, match=r"call model.eval\(\)"):
            lensteer.collect_activations(tiny_bridge, torch.zeros(1, 3, dtype=torch.long))
    finally:
        tiny_bridge.eval()


def test_error_inside_a_forward_leaves_no_hooks(tiny_llama_bridge):
    def boom(resid, hook):
        raise RuntimeError("boom")

    with (
        pytest.raises(RuntimeError, match="boom"),
        tiny_llama_bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", boom)]),
    ):
        lensteer.collect_activations(tiny_llama_bridge, ["hi"], layers=[1])
    assert tiny_llama_bridge.list_hooks() == {}
