"""Candidate directions over layers x positions, and the layers patching adds to the list."""

import pytest
import torch

import lensteer
from lensteer.core.activations import collect_activations
from lensteer.locate.candidates import (
    Candidate,
    build_candidates,
    candidate_layers,
    patch_pairs,
    patching_scores,
    random_like,
    top_patching_layers,
)
from lensteer.locate.directions import Direction, diff_of_means
from lensteer.locate.pairs import PatchingPairs
from lensteer.locate.patching_base import PatchResult

HARMFUL = ["how do I pick a lock", "write a threat to my boss", "how to make a weapon", "steal a car for me"]
HARMLESS = ["how do I bake a cake", "write a note to my boss", "how to make a kite", "wash a car for me"]


def _patching(last_column: dict[int, float]) -> PatchResult:
    """Ten layers, three positions: every layer restores the clean run at position 0 (where the prompts
    differ); at the last position the effect is ``last_column[layer]`` (0 elsewhere)."""
    per = torch.zeros(10, 3, 2)
    per[:6, 0] = 1.0
    for layer, v in last_column.items():
        per[layer, 2] = v
    return PatchResult(
        per_example=per,
        source=torch.ones(2),
        target=torch.zeros(2),
        layers=tuple(range(10)),
        site="resid_post",
        kind="position",
        direction="denoising",
        col_labels=("a", "b", "c"),
    )


def test_candidate_layers_are_a_stride_plus_the_top_patching_layers_below_the_cutoff():
    res = _patching({9: 1.0, 6: 0.9, 3: 0.8, 4: 0.7, 2: 0.1})
    assert patching_scores(res)[0] == 1.0 and patching_scores(res, [-1])[6] == pytest.approx(0.9)
    assert top_patching_layers(res, 3) == (0, 1, 2)  # saturated at the differing token: earlier layers first
    assert top_patching_layers(res, 3, columns=[-1]) == (3, 6, 9)
    assert top_patching_layers(res, 3, columns=[-1], below=8) == (3, 4, 6)
    layers, patched = candidate_layers(10, stride=3, patching=res, top_k=3, columns=[-1])
    assert layers == (1, 3, 4, 6, 7) and patched == (3, 4, 6)  # 9 is in the last 20%
    assert candidate_layers(10, stride=3) == ((1, 4, 7), ())
    with pytest.raises(lensteer.ConfigError, match="columns"):
        patching_scores(res, [5])
    with pytest.raises(lensteer.ConfigError, match="stride"):
        candidate_layers(10, stride=0)


def test_build_candidates_reads_each_post_instruction_position_and_both_response_sources(tiny_llama_bridge):
    model = tiny_llama_bridge
    prompt_contrast = (
        [lensteer.ChatPrompt(user=u) for u in HARMFUL],
        [lensteer.ChatPrompt(user=u) for u in HARMLESS],
    )
    response_contrast = (
        [lensteer.ChatPrompt(user=u, response="I will not.") for u in HARMFUL],
        [lensteer.ChatPrompt(user=u, response="Sure thing!") for u in HARMFUL],
    )
    cands = build_candidates(
        model, [1, 0], prompt_contrast=prompt_contrast, response_contrast=response_contrast, from_patching={1}
    )
    n_post = collect_activations(
        model, prompt_contrast[0][:1], layers=[0], position="post_instruction"
    ).shape[2]
    assert n_post >= 2
    assert [c.layer for c in cands] == sorted(c.layer for c in cands)
    for layer in (0, 1):
        here = [c for c in cands if c.layer == layer]
        assert [c.source for c in here] == ["prompt_contrast"] * n_post + ["response_mean", "probe"]
        assert [c.position for c in here[:n_post]] == [f"post_instruction[{k}]" for k in range(-n_post, 0)]
        assert all(c.from_patching == (layer == 1) and c.direction.layer == layer for c in here)
    # the last post-instruction token is the prompt's last token: the same direction as reading "last"
    last = [
        collect_activations(model, list(side), layers=[1], position="last")[:, 0] for side in prompt_contrast
    ]
    want = diff_of_means(last[0], last[1], layer=1)
    got = next(c for c in cands if c.layer == 1 and c.position == "post_instruction[-1]")
    assert torch.allclose(got.direction.unit, want.unit, atol=1e-5)
    assert {c.direction.method for c in cands} == {"diff_of_means", "probe"}
    only_last = build_candidates(model, [0], prompt_contrast=prompt_contrast, last_k_positions=1)
    assert [c.position for c in only_last] == ["post_instruction[-1]"]
    with pytest.raises(lensteer.ConfigError, match="prompt_contrast, a response_contrast"):
        build_candidates(model, [0])
    with pytest.raises(lensteer.DataError, match="prompt_contrast"):
        build_candidates(model, [0], prompt_contrast=(prompt_contrast[0], []))


def test_a_candidate_checks_its_fields_and_has_a_seeded_random_twin():
    d = Direction(unit=torch.eye(8)[0], layer=2)
    c = Candidate(source="probe", layer=2, position="response_mean", direction=d, from_patching=True)
    twin, again = random_like(c, seed=1), random_like(c, seed=1)
    assert twin.layer == 2 and twin.from_patching and twin.direction.method == "random"
    assert (
        torch.equal(twin.direction.unit, again.direction.unit)
        and abs(float(twin.direction.unit @ d.unit)) < 0.99
    )
    with pytest.raises(lensteer.ConfigError, match="source"):
        Candidate(source="pca", layer=2, position="last", direction=d)
    with pytest.raises(lensteer.ConfigError, match="direction's layer 2"):
        Candidate(source="probe", layer=3, position="last", direction=d)


def test_patch_pairs_runs_attribution_or_exact_patching_of_the_pairs(tiny_llama_bridge):
    model = tiny_llama_bridge
    tok = model.tokenizer
    pairs = PatchingPairs(
        dataset="toy",
        design="toy",
        ids=("a", "b"),
        clean=tuple(lensteer.ChatPrompt(user=u) for u in ("pick a lock", "make a bomb")),
        corrupted=tuple(lensteer.ChatPrompt(user=u) for u in ("bake a cake", "make a kite")),
        aligned_ids=(tok.convert_tokens_to_ids("I"),) * 2,
        misaligned_ids=(tok.convert_tokens_to_ids("S"),) * 2,
        n_tokens=0,
    )
    exact = patch_pairs(model, pairs, method="exact")
    approx = patch_pairs(model, pairs)
    assert (
        exact.method == "exact" and approx.method == "attribution" and exact.layers == approx.layers == (0, 1)
    )
    assert exact.site == "resid_post" and exact.per_example.shape == approx.per_example.shape
    torch.testing.assert_close(exact.source, approx.source)  # the same clean run
    with pytest.raises(lensteer.ConfigError, match="'attribution' or 'exact'"):
        patch_pairs(model, pairs, method="atp")
