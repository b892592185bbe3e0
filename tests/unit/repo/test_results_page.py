"""The results page (``docs/results.md``) is generated whole from ``docs/study/report.json``, never typed by hand;
the README's headline and the page's hand-written summary say what the report says."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

from lensteer.study.report import headline_table

ROOT = Path(__file__).resolve().parents[3]
PAGE = ROOT / "docs" / "results.md"
REPORT = ROOT / "docs" / "study" / "report.json"


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_results_page", ROOT / "scripts" / "make_results_page.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report():
    return json.loads(REPORT.read_text())


def _block(text, name):
    found = re.findall(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, flags=re.DOTALL)
    assert len(found) == 1, f"the page needs exactly one {name} block"
    return found[0]


def test_results_page_is_what_the_generator_writes_from_the_committed_report():
    """The one check that the generated page is current: regenerate it and compare, byte for byte."""
    assert PAGE.read_text() == _script().page(_report()), "run: python scripts/make_results_page.py"


def test_results_page_blocks_are_the_reports_tables():
    report, page = _report(), PAGE.read_text()
    assert _block(page, "results") == headline_table(report)
    contents = _script().block_contents(report)
    for name in ("robustness", "regimes", "findings"):
        assert _block(page, name) == contents[name]


def test_run_line_describes_the_report():
    report = _report()
    line = _block(PAGE.read_text(), "results-run")
    sizes = sorted(e["baseline"]["n_eval"] for e in report["threat_models"].values())
    said = str(sizes[0]) if sizes[0] == sizes[-1] else f"{sizes[0]}-{sizes[-1]}"
    assert f"{said} test prompts per condition" in line
    assert ", ".join(report["config"]["threat_models"]) in line


def test_findings_say_not_significant_where_p_is_large():
    said = _block(PAGE.read_text(), "findings")
    verdicts = [
        v
        for line in said.splitlines()
        for v in re.findall(r"p = ([0-9.e+-]+), (significant|not significant)", line)
    ]
    assert len(verdicts) >= 10
    for p, verdict in verdicts:
        assert (float(p) < 0.05) == (verdict == "significant"), (p, verdict)


def test_every_figure_the_results_page_shows_is_committed():
    shown = re.findall(r"\]\(\.\./(figures/[^)]+\.png)\)", PAGE.read_text())
    assert "figures/tradeoff.png" in shown and len(shown) >= 4
    for path in shown:
        assert (ROOT / path).is_file(), f"the results page shows {path}, which is not in figures/"


def test_results_page_quotes_the_compassion_scorers_held_out_accuracy_from_data_readme():
    data_readme = (ROOT / "data" / "README.md").read_text()
    assert "**97.8%** (88/90" in data_readme
    page = PAGE.read_text()
    assert "97.8%" in page and "88/90" in page


def test_generator_flags_a_stale_page_rewrites_it_and_fails_on_a_template_without_blocks(tmp_path):
    script, report = _script(), _report()
    template = (
        "# title\n\ntext before\n<!-- results-run:start -->\nold run\n<!-- results-run:end -->\n"
        "<!-- findings:start -->\n- old claim\n<!-- findings:end -->\n"
        "<!-- results:start -->\n| old | table |\n<!-- results:end -->\n"
        "<!-- subsets:start -->\nold subsets\n<!-- subsets:end -->\n"
        "<!-- regimes:start -->\nold regimes\n<!-- regimes:end -->\n"
        "<!-- robustness:start -->\nold robustness\n<!-- robustness:end -->\ntext after\n"
    )
    new = script.page(report, template)
    assert new.startswith(script.HEADER + "# title\n\ntext before\n")
    assert _block(new, "results") == headline_table(report) and "| old | table |" not in new
    assert "old regimes" not in new and "old claim" not in new and "old robustness" not in new
    assert new.endswith("<!-- robustness:end -->\ntext after\n")
    assert script.render(script.render(template, report), report) == script.render(
        template, report
    )  # idempotent
    stale = tmp_path / "results.md"
    stale.write_text("an old page\n")
    assert script.main(["--report", str(REPORT), "--out", str(stale), "--check"]) == 1
    assert stale.read_text() == "an old page\n"  # --check writes nothing
    assert script.main(["--report", str(REPORT), "--out", str(stale)]) == 0
    assert stale.read_text() == PAGE.read_text()
    assert script.main(["--report", str(REPORT), "--out", str(stale), "--check"]) == 0
    with pytest.raises(SystemExit, match="exactly one <!-- results:start -->"):
        script.render("no markers here", report)


def _distinct(report):
    return {
        tm: {m: r for m, r in e["methods"].items() if not r.get("same_as")}
        for tm, e in report["threat_models"].items()
    }


def test_hand_written_summary_and_readme_headline_are_what_the_report_says():
    """The page's summary bullets and the README's three-line headline, each checked against the report."""
    report = _report()
    tms, distinct = report["threat_models"], _distinct(report)
    compassion = distinct["compassion"]
    assert round(100 * tms["compassion"]["baseline"]["trait"]) == 65
    assert all(
        0.955 <= r["trait"] <= 0.985 and max(r["p_vs_baseline"], r["p_vs_prompting"], r["p_vs_random"]) < 1e-7
        for r in compassion.values()
    )
    assert tms["compassion"]["controls"]["prompting"]["trait"] == tms["compassion"]["baseline"]["trait"]
    assert all(r["p_vs_baseline"] >= 0.05 and r["kl_heldout"] < 0.02 for r in distinct["refusal"].values())
    honesty = tms["honesty"]
    assert round(100 * honesty["baseline"]["trait"]) == 53
    assert all(
        r["trait"] < honesty["baseline"]["trait"]
        and r["p_vs_baseline"] < 0.001
        and 0.275 <= r["trait"] <= 0.335
        for r in distinct["honesty"].values()
    )
    assert all(t["verdict"].startswith("no") for e in tms.values() for t in e["tradeoff"].values())
    assert all(r["over_refusal_borderline"] <= 0.04 for e in distinct.values() for r in e.values())
    ratio = {
        tm: [
            r["regimes"][g]["fired_share_generated"] / r["regimes"][g]["fired_share_harmless_generated"]
            for m, r in distinct[tm].items()
            if m in ("StTP", "StMP")
            for g in ("paper", "kl_matched")
        ]
        for tm in tms
    }
    assert all(10.5 <= x <= 12 for x in ratio["refusal"]) and all(
        0.35 <= x <= 0.75 for x in ratio["compassion"]
    )
    assert all(1.15 <= x <= 1.45 for x in ratio["honesty"])
    robust = report["robustness"]
    unsteered = {(r["threat_model"], r["setting"]): r["trait"] for r in robust if r["method"] == "baseline"}
    steered = [r for r in robust if r["method"] not in ("baseline", "prompting")]
    raised = [
        (r["setting"], r["method"], r["direction_from"])
        for r in steered
        if r["p_vs_baseline"] < 0.05 and r["trait"] > unsteered[(r["threat_model"], r["setting"])]
    ]
    assert raised == [("prefill_dismiss", "SwFC", "base")]
    dismiss = next(r for r in steered if (r["setting"], r["method"]) == ("prefill_dismiss", "SwFC"))
    assert dismiss["p_vs_baseline"] == pytest.approx(0.021, abs=5e-4)
    assert min(r["p_vs_baseline"] for r in steered if r["setting"] == "organism:dishonest") >= 0.205
    page = " ".join(PAGE.read_text().split())
    assert "[how it was run](study/README.md)" in page and (ROOT / "docs" / "study" / "README.md").is_file()
    for said in (
        "from 65% to 96-98% (p < 1e-7",
        "(53% unsteered to 28-33%, p < 0.001)",
        "(0.4-0.7x)",
        "(1.2-1.4x)",
        "(86% to 97%, p = 0.021",
        "p >= 0.21 with either direction",
        "at or below 4% throughout",
    ):
        assert said in page, said
    readme = " ".join((ROOT / "README.md").read_text().split())
    n = sorted(e["baseline"]["n_eval"] for e in tms.values())
    kl = report["config"]["kl_budgets"]
    for said in (
        f"matched KL of {kl[0]:g} nats/token and {n[0]}-{n[-1]} test prompts per condition",
        "from 65% to 96-98% where prompting does not (p < 1e-7)",
        "no method changes refusal significantly",
        "lowers honest answers (53% unsteered to 28-33%)",
        "[docs/results.md](docs/results.md)",
    ):
        assert said in readme, said
