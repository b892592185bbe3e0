"""The ``Bridge`` protocol names what lensteer reads from a model; a real bridge must carry all of it."""

import re
from pathlib import Path

import pytest

from lensteer.core.bridge import BridgeProtocol

PACKAGE = Path(__file__).resolve().parents[3] / "lensteer"


def _members() -> list[str]:
    return sorted(n for n in vars(BridgeProtocol) if not n.startswith("_") or n == "__call__")


def test_protocol_names_the_surface_lensteer_uses():
    assert {"cfg", "tokenizer", "hooks", "hook_dict", "__call__", "run_with_cache", "parameters"} <= set(
        _members()
    )


@pytest.mark.parametrize("fixture", ["tiny_bridge", "tiny_llama_bridge"])
def test_transformer_bridge_carries_every_member(fixture, request):
    model = request.getfixturevalue(fixture)
    missing = [n for n in _members() if not hasattr(model, n)]
    assert missing == [], (
        f"TransformerBridge lacks {missing}: update lensteer.core.bridge.Bridge and its users"
    )
    assert callable(model.hooks) and callable(model.run_with_cache)
    assert all(hasattr(model.cfg, n) for n in ("n_layers", "d_model", "n_heads", "d_vocab"))


def test_signatures_take_a_bridge_not_any():
    loose = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in sorted(PACKAGE.rglob("*.py"))
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\bmodel: (Any|\"Any\")\b", line)
    ]
    assert loose == [], "type the model as lensteer.core.bridge.Bridge:\n" + "\n".join(loose)
