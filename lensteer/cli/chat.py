"""``lensteer chat --steering S``: talk to the model and read its unsteered and steered replies side by side.

Lines come from the terminal (with a ``you>`` prompt) or from a pipe (``printf 'Hi\\n' | lensteer chat ...``);
``/fired`` toggles the per-token view of the steered reply (where the steering fired: colours in a
terminal, ``[brackets]`` in a pipe), ``/reset`` starts a new conversation, ``/quit`` (or end of input) ends.
"""

import argparse
import shutil
import sys
from collections.abc import Iterator
from typing import Any

from lensteer.core.bridge import Bridge

COMMANDS = ("/fired", "/reset", "/quit", "/exit", "/help")
HELP = "commands: /fired (toggle the per-token view), /reset (new conversation), /quit"


def _lines(stream: Any) -> Iterator[str]:
    """The user's lines: prompted with ``you>`` at a terminal, read as they come from a pipe."""
    if stream.isatty():
        while True:
            try:
                yield input("you> ")
            except EOFError:
                return
    else:
        yield from (line.rstrip("\n") for line in stream)


def _fired_view(turn: Any, model: Bridge, colour: bool) -> str:
    from lensteer.plotting.token_view import token_view

    view = token_view(turn.generations, 1, model)
    return view.ansi() if colour else view.plain()


def chat_loop(model: Bridge, steering: Any, args: argparse.Namespace, stream: Any) -> int:
    """Answer every line of ``stream`` unsteered and steered; print both side by side."""
    from lensteer.evaluate.chat_session import SideBySideChat

    chat = SideBySideChat(model, steering, system=args.system, max_new_tokens=args.max_new_tokens)
    fired, colour = args.fired, sys.stdout.isatty()
    width = args.width or min(shutil.get_terminal_size((100, 24)).columns, 160)
    print(f"steering: {chat_description(steering)}\n{HELP}\n", flush=True)
    for raw in _lines(stream):
        text = raw.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/help" or (text.startswith("/") and text.split()[0] not in COMMANDS):
            print(HELP if text == "/help" else f"unknown command {text!r}; {HELP}", flush=True)
            continue
        if text == "/fired":
            fired = not fired
            print(f"per-token view {'on' if fired else 'off'}", flush=True)
            continue
        if text == "/reset":
            chat.reset()
            print("new conversation", flush=True)
            continue
        turn = chat.say(text)
        print(f"you: {text}\n{turn.columns(width)}", flush=True)
        if fired:
            print(_fired_view(turn, model, colour), flush=True)
        print(flush=True)
    return 0


def chat_description(steering: Any) -> str:
    items = steering if isinstance(steering, list | tuple) else [steering]
    return " + ".join(s.describe() for s in items)


def cmd_chat(args: argparse.Namespace) -> int:
    import lensteer
    from lensteer.cli.commands import _load

    model, _ = _load(args)
    steering = lensteer.load_steering(args.steering, model=model)
    return chat_loop(model, steering, args, sys.stdin)


def add_chat_parser(sub: Any, int_at_least: Any) -> None:
    chat = sub.add_parser(
        "chat",
        help="talk to the model: unsteered and steered replies side by side, turn by turn",
        description="A conversation answered twice at every turn, without and with a saved steering, each side "
        "keeping its own history; the replies are printed side by side. Reads lines from the terminal or a pipe. "
        f"{HELP}.",
    )
    chat.add_argument("--steering", required=True, help="a saved steering (path without suffix)")
    chat.add_argument(
        "--model", default=None, help="HF id, model folder or .gguf (default: embedded SmolLM2-135M-Instruct)"
    )
    chat.add_argument("--system", default=None, help="a system prompt for both sides")
    chat.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=64, help="tokens per reply (default 64)"
    )
    chat.add_argument(
        "--fired", action="store_true", help="start with the per-token view of the steered reply on"
    )
    chat.add_argument(
        "--width",
        type=int_at_least(24),
        default=None,
        help="characters for both columns (default: the terminal's)",
    )
    chat.add_argument("--threads", type=int_at_least(0), default=0, help="torch threads (0: torch's default)")
    chat.set_defaults(func=cmd_chat)
