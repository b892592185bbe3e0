"""Figure of ``bench_peers.py``'s ratios (ours vs each peer; > 1: lensteer faster), from its results.json.

python benchmarks/peers/plot_peers.py [benchmarks/peers/results.json] [figures/bench_peers.png]
"""

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    labels = [f"{r['measurement']}\nvs {r['peer']}" for r in rows]
    ratios = [r["ratio"] for r in rows]
    colors = [
        "#2a7ab0" if x >= 1.0 else ("#e0a030" if "raw HF" in r["peer"] and x >= 0.9 else "#c0392b")
        for x, r in zip(ratios, rows, strict=True)
    ]
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.6))
    y = list(range(len(rows)))[::-1]
    ax.barh(y, ratios, color=colors)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=1)
    ax.axvline(0.9, color="grey", lw=0.8, ls="--")
    for yi, x in zip(y, ratios, strict=True):
        ax.text(x * 1.03, yi, f"{x:.2f}x", va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=6.5)
    ax.set_xlabel("lensteer speed / peer speed (log scale; > 1: lensteer faster; dashed: 0.9x)")
    ax.set_title(
        f"lensteer vs peers, {results['date']}, {results['threads']} torch thread(s), "
        f"median of {results['rounds']} round(s)",
        fontsize=9,
    )
    ax.set_xlim(min(0.5, min(ratios) * 0.8), max(ratios) * 1.6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results.json")
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "figures" / "bench_peers.png"
    plot(json.loads(src.read_text()), dst)
    print(dst)
