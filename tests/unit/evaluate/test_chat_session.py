"""`lensteer chat`: a conversation answered unsteered and steered, each side with its own history."""

import io

import pytest
import torch

import lensteer
from lensteer.cli import main
from lensteer.core.chat import ChatPrompt, Turn
from lensteer.errors import ConfigError
from lensteer.evaluate.chat_session import SideBySideChat
from lensteer.plotting.token_view import token_view


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_tokenizer):
    from builders import save_tiny_llama_folder

    return save_tiny_llama_folder(
        tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer, initializer_range=0.5
    )


@pytest.fixture(scope="module")
def model(folder):
    return lensteer.load_model(str(folder))


@pytest.fixture(scope="module")
def steering(model):
    unit = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(2))
    return lensteer.Steering.from_direction(unit, layers=(0,), mode="add", scale=6.0)


def test_each_side_answers_its_own_conversation(model, steering):
    chat = SideBySideChat(model, steering, max_new_tokens=6)
    first = chat.say("hello")
    second = chat("how are you?")  # a notebook cell: chat("...") shows the turn
    assert first.unsteered != first.steered and 0 < second.steered_share <= 1
    history = (Turn(role="user", content="hello"), Turn(role="assistant", content=first.unsteered))
    alone = lensteer.generate(model, [ChatPrompt(user="how are you?", history=history)], max_new_tokens=6)
    assert second.unsteered == alone.texts[0]  # the unsteered side saw its own reply, not the steered one
    steered_history = (Turn(role="user", content="hello"), Turn(role="assistant", content=first.steered))
    assert chat.prompts("next")[1].history[:2] == steered_history
    html = second._repr_html_()
    assert "<table" in html and "unsteered" in html and "fired on" in html
    chat.reset()
    assert chat.turns == [] and chat.prompts("again")[0].history == ()


def test_several_steerings_and_the_fired_view(model, steering):
    other = lensteer.Steering.from_direction(-steering.unit, layers=(1,), mode="add", scale=2.0)
    turn = SideBySideChat(model, [steering, other], max_new_tokens=4).say("hi")
    view = token_view(turn.generations, 1, model)
    assert len(view) == len(turn.generations.tokens[1]) and view.n_fired > 0
    assert token_view(turn.generations, 0, model).n_fired == 0  # the unsteered row
    with pytest.raises(ConfigError, match="at least 24"):
        turn.columns(10)


def test_chat_from_a_pipe_through_the_cli(folder, model, steering, tmp_path, monkeypatch, capsys):
    stem = tmp_path / "s"
    lensteer.save_steering(steering, stem, model=model)
    piped = io.StringIO("hello there\n\n/fired\nand now?\n/nope\n/reset\n/quit\nnever read\n")
    monkeypatch.setattr("sys.stdin", piped)
    args = ["chat", "--model", str(folder), "--steering", str(stem), "--max-new-tokens", "5", "--width", "60"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("you: ") == 2 and "you: hello there" in out and "never read" not in out
    assert "unsteered" in out and "| steered (fired " in out and "per-token view on" in out
    assert "steering fired on" in out and "[" in out  # the plain per-token view of the second turn
    assert "unknown command '/nope'" in out and "new conversation" in out
    assert all(len(line) <= 60 for line in out.splitlines() if " | " in line)


def test_chat_refuses_a_missing_steering(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", "--model", str(folder), "--steering", str(tmp_path / "missing")]) == 2
    assert "lensteer: error:" in capsys.readouterr().err
