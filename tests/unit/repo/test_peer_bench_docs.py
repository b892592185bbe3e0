"""The docs' summary of `make bench-peers` (docs/README.md, Speed) is what the committed benchmarks/peers/results.json says."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _range(ratios, digits):
    return f"{min(ratios):.{digits}f}-{max(ratios):.{digits}f}x"


def test_docs_quote_the_committed_peer_benchmark():
    results = json.loads((ROOT / "benchmarks/peers/results.json").read_text())
    rows = results["rows"]
    readme = " ".join((ROOT / "docs" / "README.md").read_text().split())
    results_md = (ROOT / "benchmarks/RESULTS.md").read_text()

    def ratios(measurement, peer=None, not_peer=None):
        return [
            r["ratio"]
            for r in rows
            if r["measurement"].startswith(measurement)
            and (peer is None or r["peer"].startswith(peer))
            and (not_peer is None or not r["peer"].startswith(not_peer))
        ]

    assert f"extraction {_range(ratios('extraction'), 1)}" in readme
    assert f"patching {_range(ratios('resid_pre patching'), 0)} the peers" in readme
    assert (
        f"steered generation {_range(ratios('steered generation', peer='raw HF'), 2)} raw Hugging Face"
        in readme
    )
    assert (
        f"{_range(ratios('steered generation', not_peer='raw HF'), 2)} steering-vectors and repeng" in readme
    )
    assert results["date"] in readme and results["date"] in results_md  # the docs link the run they quote
    same_tokens = [r["note"].split(": ")[1].removesuffix(" rows").split("/") for r in rows if r["note"]]
    assert len(same_tokens) == 4 and all(a == b for a, b in same_tokens)  # the peers' greedy tokens are ours
