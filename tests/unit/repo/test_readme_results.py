"""The README's study results come from ``docs/study/report.json``, never typed by hand."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from lensteer.study.report import headline_table

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
REPORT = ROOT / "docs" / "study" / "report.json"


def _script():
    spec = importlib.util.spec_from_file_location("update_readme_results", ROOT / "scripts" / "update_readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(text, name):
    found = re.findall(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, flags=re.DOTALL)
    assert len(found) == 1, f"README needs exactly one {name} block"
    return found[0]


def _section():
    text = README.read_text()
    start = text.index("## Results on the embedded model")
    return text[start : text.index("\n## ", start + 1)]


def test_readme_table_is_the_reports_headline_table():
    report = json.loads(REPORT.read_text())
    assert _block(README.read_text(), "results") == headline_table(report)


def test_readme_run_line_describes_the_report():
    report = json.loads(REPORT.read_text())
    line = _block(README.read_text(), "results-run")
    assert line == _script().run_line(report)
    sizes = sorted(e["baseline"]["n_eval"] for e in report["threat_models"].values())
    said = str(sizes[0]) if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
    assert f"{said} test prompts per condition" in line
    assert ", ".join(report["config"]["threat_models"]) in line


def test_readme_robustness_table_is_the_reports():
    report = json.loads(REPORT.read_text())
    assert _block(README.read_text(), "robustness") == _script().block_contents(report)["robustness"]


def test_readme_findings_are_the_reports_and_say_not_significant_where_p_is_large():
    script, report = _script(), json.loads(REPORT.read_text())
    said = _block(README.read_text(), "findings")
    assert said == script.block_contents(report)["findings"]
    for line in said.splitlines():
        for p, verdict in re.findall(r"p = ([0-9.e+-]+), (significant|not significant)", line):
            assert (float(p) < 0.05) == (verdict == "significant"), line


def test_every_figure_the_results_section_shows_is_committed():
    shown = re.findall(r"\]\((figures/[^)]+\.png)\)", _section())
    assert "figures/tradeoff.png" in shown and len(shown) >= 4
    for path in shown:
        assert (ROOT / path).is_file(), f"README shows {path}, which is not in figures/"


def test_readme_quotes_the_compassion_scorers_held_out_accuracy_from_data_readme():
    data_readme = (ROOT / "data" / "README.md").read_text()
    assert "**97.8%** (88/90" in data_readme
    assert "97.8%" in _section() and "88/90" in _section()


def test_update_script_rewrites_stale_blocks_and_leaves_the_rest(tmp_path):
    script, report = _script(), json.loads(REPORT.read_text())
    stale = ("# title\n\ntext before\n<!-- results-run:start -->\nold run\n<!-- results-run:end -->\n"
             "<!-- findings:start -->\n- old claim\n<!-- findings:end -->\n"
             "<!-- results:start -->\n| old | table |\n<!-- results:end -->\n"
             "<!-- regimes:start -->\nold regimes\n<!-- regimes:end -->\n"
             "<!-- robustness:start -->\nold robustness\n<!-- robustness:end -->\ntext after\n")
    new = script.render(stale, report)
    assert _block(new, "results") == headline_table(report) and "| old | table |" not in new
    assert "old regimes" not in new and new.startswith("# title\n\ntext before\n")
    assert new.endswith("<!-- robustness:end -->\ntext after\n") and "old robustness" not in new
    assert script.render(new, report) == new  # idempotent
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    assert script.main(["--report", str(REPORT), "--readme", str(readme), "--check"]) == 1
    assert readme.read_text() == stale  # --check writes nothing
    assert script.main(["--report", str(REPORT), "--readme", str(readme)]) == 0
    assert readme.read_text() == new
    with pytest.raises(SystemExit, match="exactly one <!-- results:start -->"):
        script.render("no markers here", report)


def test_readme_summary_of_the_paper_study_is_what_the_report_says():
    """The hand-written bullets under the findings, each checked against the report it summarises."""
    report = json.loads(REPORT.read_text())
    tms = report["threat_models"]
    distinct = {tm: {m: r for m, r in e["methods"].items() if not r.get("same_as")} for tm, e in tms.items()}
    compassion = distinct["compassion"]
    assert round(100 * tms["compassion"]["baseline"]["trait"]) == 65
    assert all(0.955 <= r["trait"] <= 0.985 and max(r["p_vs_baseline"], r["p_vs_prompting"], r["p_vs_random"]) < 1e-7
               for r in compassion.values())
    assert tms["compassion"]["controls"]["prompting"]["trait"] == tms["compassion"]["baseline"]["trait"]
    assert all(r["p_vs_baseline"] >= 0.05 and r["kl_heldout"] < 0.02 for r in distinct["refusal"].values())
    honesty = tms["honesty"]
    assert round(100 * honesty["baseline"]["trait"]) == 53
    assert all(r["trait"] < honesty["baseline"]["trait"] and r["p_vs_baseline"] < 0.001 and 0.275 <= r["trait"] <= 0.335
               for r in distinct["honesty"].values())
    assert all(t["verdict"].startswith("no") for e in tms.values() for t in e["tradeoff"].values())
    assert all(r["over_refusal_borderline"] <= 0.04 for e in distinct.values() for r in e.values())
    ratio = {tm: [r["regimes"][g]["fired_share_generated"] / r["regimes"][g]["fired_share_harmless_generated"]
                  for m, r in distinct[tm].items() if m in ("StTP", "StMP") for g in ("paper", "kl_matched")] for tm in tms}
    assert all(10.5 <= x <= 12 for x in ratio["refusal"]) and all(0.35 <= x <= 0.75 for x in ratio["compassion"])
    assert all(1.15 <= x <= 1.45 for x in ratio["honesty"])
    robust = report["robustness"]
    unsteered = {(r["threat_model"], r["setting"]): r["trait"] for r in robust if r["method"] == "baseline"}
    steered = [r for r in robust if r["method"] not in ("baseline", "prompting")]
    raised = [(r["setting"], r["method"], r["direction_from"]) for r in steered
              if r["p_vs_baseline"] < 0.05 and r["trait"] > unsteered[(r["threat_model"], r["setting"])]]
    assert raised == [("prefill_dismiss", "SwFC", "base")]
    dismiss = next(r for r in steered if (r["setting"], r["method"]) == ("prefill_dismiss", "SwFC"))
    assert dismiss["p_vs_baseline"] == pytest.approx(0.021, abs=5e-4)
    assert min(r["p_vs_baseline"] for r in steered if r["setting"] == "organism:dishonest") >= 0.205
    assert "[docs/study/README.md]" in _section() and (ROOT / "docs" / "study" / "README.md").is_file()

