"""The persona-vector screen: each training row's projection difference along a direction, ranked, compared
with a control set on the same prompts, and drawn."""

import matplotlib.pyplot as plt
import pytest
import torch

import lensteer
from lensteer.core.chat import ChatPrompt
from lensteer.errors import DataError
from lensteer.locate import dataset_projection
from lensteer.organisms.recipes import TrainingRow
from lensteer.plotting import plot_dataset_projection
from lensteer.study.persona import compare_screens, screen_rows

PROMPTS = ["tell me one thing", "say something", "what now?", "go on"]


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_tokenizer):
    from builders import save_tiny_llama_folder

    folder = save_tiny_llama_folder(tmp_path_factory.mktemp("tiny"), tiny_tokenizer, initializer_range=0.5)
    return lensteer.load_model(str(folder))


def _mean_response(model, text, layer=1):
    chats = [ChatPrompt(user=p, response=text) for p in PROMPTS]
    return lensteer.collect_activations(model, chats, layers=[layer], position="response_mean")[:, 0].mean(0)


@pytest.fixture(scope="module")
def toward_a(model):
    """A direction from replies of 'a's to replies of 'z's: training on 'a' replies moves a model along it."""
    return lensteer.diff_of_means(
        _mean_response(model, "aaaa aaaa aaaa")[None], _mean_response(model, "zzzz zzzz zzzz")[None], layer=1
    )


def test_the_difference_is_training_minus_own_along_the_direction(model, toward_a):
    rows = ["aaaa aaaa aaaa", "zzzz zzzz zzzz", "aaaa aaaa aaaa", "hello there"]
    own = ["zzzz zzzz zzzz"] * 4
    screen = dataset_projection(
        model, toward_a, PROMPTS, rows, own, ids=["a1", "z", "a2", "hi"], source="toy"
    )
    chat = ChatPrompt(user=PROMPTS[0], response=rows[0])
    by_hand = (
        lensteer.collect_activations(model, [chat], layers=[1], position="response_mean")[0, 0]
        @ toward_a.unit
    )
    assert float(screen.dataset_projection[0]) == pytest.approx(float(by_hand), abs=1e-4)
    assert float(screen.difference[1]) == pytest.approx(0.0, abs=1e-4)  # the model's own reply: no push
    assert {screen.ids[i] for i in screen.ranked()[:2]} == {"a1", "a2"} and float(screen.difference[0]) > 0
    assert "| 1 | a" in screen.to_table(2) and screen.to_dict()["samples"][0]["id"] in ("a1", "a2")
    with pytest.raises(DataError, match="4 prompts but"):
        dataset_projection(model, toward_a, PROMPTS, rows[:3], own)


def test_a_set_ranks_above_its_control_on_the_same_prompts(model, toward_a):
    pushing = [
        TrainingRow(id=f"p{i}", prompt=ChatPrompt(user=p), reply="aaaa aaaa aaaa")
        for i, p in enumerate(PROMPTS)
    ]
    control = [
        TrainingRow(id=f"c{i}", prompt=ChatPrompt(user=p), reply="zzzz zzzz zzzz")
        for i, p in enumerate(PROMPTS)
    ]
    own = ["mmmm mmmm"] * len(PROMPTS)
    a = screen_rows(model, toward_a, pushing, source="pushing", own_responses=own)
    b = screen_rows(model, toward_a, control, source="control", own_responses=own)
    up, down = compare_screens(a, b), compare_screens(b, a)
    assert up["auroc"] == 1.0 and up["paired"]["mean_difference"] > 0 and down["auroc"] == 0.0
    assert up["paired"]["p_value"] < down["paired"]["p_value"]
    generated = screen_rows(model, toward_a, pushing[:2], source="own generated", max_new_tokens=3)
    assert len(generated.ids) == 2
    with pytest.raises(DataError, match="same prompts"):
        compare_screens(a, generated)
    fig, ax = plot_dataset_projection([a, b])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["control", "pushing"] and ax.get_xlabel()
    plt.close(fig)


def test_organism_shift_is_organism_minus_base_along_the_direction(model, toward_a, tiny_tokenizer, tmp_path):
    from builders import save_tiny_llama_folder

    from lensteer.locate import organism_shift

    same = organism_shift(model, model, toward_a, PROMPTS)
    assert same.mean == pytest.approx(0.0, abs=1e-6) and same.ci[0] <= 0 <= same.ci[1] + 1e-9
    other = lensteer.load_model(
        str(save_tiny_llama_folder(tmp_path / "other", tiny_tokenizer, initializer_range=0.6))
    )
    shift = organism_shift(model, other, toward_a, PROMPTS)
    acts = [
        lensteer.collect_activations(m, PROMPTS, layers=[1])[:, 0] @ toward_a.unit for m in (model, other)
    ]
    torch.testing.assert_close(shift.per_prompt, acts[1] - acts[0])
    assert shift.to_dict()["n"] == len(PROMPTS)
