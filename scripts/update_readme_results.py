"""Rewrite the README's study results from ``docs/study/report.json`` (numbers are never typed by hand).

The marked blocks are rewritten in place:

* ``<!-- results:start -->`` ... ``<!-- results:end -->``: ``lensteer.study.report.headline_table(report)``;
* ``<!-- results-run:start -->`` ... ``<!-- results-run:end -->``: one line saying what run made
  the report (model, profile sizes, threat models, methods, time);
* ``<!-- regimes:start -->`` ... ``<!-- regimes:end -->``: ``lensteer.study.report.regimes_table(report)``
  (selective methods at scale 1 and KL-matched, with where they fired);
* ``<!-- robustness:start -->`` ... ``<!-- robustness:end -->``: ``lensteer.study.report.robustness_table(report)``
  (trait per attack or organism and method, with the held-out KL and the paired test);
* ``<!-- findings:start -->`` ... ``<!-- findings:end -->``: ``lensteer.study.report.findings(report)``,
  one sentence per comparison with its paired test ("not significant" where p >= 0.05).

Usage: ``python scripts/update_readme_results.py [--report docs/study/report.json] [--readme README.md] [--check]``
(``--check`` exits 1 when the README is out of date instead of rewriting it).
"""

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from lensteer.study.report import findings, headline_table, regimes_table, robustness_table

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = ("results", "results-run", "regimes", "robustness", "findings")


def _n(value: Any, whole: str) -> str:
    return whole if value is None else str(value)


def run_line(report: dict[str, Any]) -> str:
    """What run made ``report``, in one Markdown line."""
    c = report["config"]
    model = report.get("model", {}).get("name", "?")
    n_conv = c.get("n_conversations") or 0
    conversations = (f"{n_conv} conversation{'s' * (n_conv != 1)} x {c['n_turns']} turns"
                     if n_conv else "no conversations")
    sizes = sorted({e.get("baseline", {}).get("n_eval") for e in report["threat_models"].values()} - {None})
    n_eval = None if not sizes else (str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}")
    seeds = c.get("random_seeds") or []
    return (f"Run: `{model}`, lensteer {report.get('lensteer_version', '?')}; threat models "
            f"{', '.join(c['threat_models'])}; methods {', '.join(c['methods'])}; KL budgets "
            f"{', '.join(f'{b:g}' for b in c['kl_budgets'])} nats/token; {_n(n_eval, 'all')} test prompts per "
            f"condition, {_n(c.get('n_harmless'), 'all')} held-out harmless and {_n(c.get('n_borderline'), 'all')} "
            f"borderline prompts, {c['max_new_tokens']} new tokens, {conversations}, "
            f"{_n(c.get('n_mc'), 'all')} multiple-choice items, {_n(c.get('n_paragraphs'), 'all')} paragraphs; "
            f"random directions: {len(seeds)} seed{'s' * (len(seeds) != 1)}; prompting baseline: "
            f"{'yes' if c.get('prompting') else 'no'}; {report.get('seconds', 0) / 60:.0f} min recorded in its folder "
            "(resumed runs summed; a cell run beside it not counted).")


def block_contents(report: dict[str, Any]) -> dict[str, str]:
    """The text each marked block must hold."""
    return {"results": headline_table(report), "results-run": run_line(report), "regimes": regimes_table(report),
            "robustness": robustness_table(report),
            "findings": "\n".join(f"- {s}" for s in findings(report))}


def render(readme: str, report: dict[str, Any]) -> str:
    """``readme`` with every marked block replaced by its contents from ``report``."""
    for name, text in block_contents(report).items():
        pattern = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.DOTALL)
        if len(pattern.findall(readme)) != 1:
            raise SystemExit(f"README needs exactly one <!-- {name}:start --> ... <!-- {name}:end --> block")
        readme = pattern.sub(lambda m, text=text: m.group(1) + text + "\n" + m.group(2), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--report", default=str(ROOT / "docs" / "study" / "report.json"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"))
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date; write nothing")
    args = parser.parse_args(argv)
    readme_path = Path(args.readme)
    old = readme_path.read_text()
    new = render(old, json.loads(Path(args.report).read_text()))
    if args.check:
        print("README results are up to date" if new == old else "README results are out of date")
        return int(new != old)
    if new != old:
        tmp = readme_path.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(readme_path)
    print(f"{readme_path}: results {'rewritten' if new != old else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
