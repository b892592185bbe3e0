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


def test_results_page_quotes_the_scorers_audit_kappas_from_data_readme():
    """The page's scorer paragraph quotes the study's fitted verdicts' kappa from data/README.md's audit table."""
    data_readme = (ROOT / "data" / "README.md").read_text()
    page = " ".join(PAGE.read_text().split())
    for scorer, kappa in (
        ("refusal", "0.57 [0.44-0.69]"),
        ("compassion", "0.71 [0.58-0.82]"),
        ("honesty", "0.77 [0.68-0.85]"),
    ):
        assert f"| {scorer} verdict | " in data_readme and f"| {kappa} |" in data_readme, scorer
        assert kappa in page, scorer


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
    """The page's summary bullets and the README's headline, each checked against the report."""
    report = _report()
    tms, distinct = report["threat_models"], _distinct(report)
    refusal, compassion, honesty = (distinct[tm] for tm in ("refusal", "compassion", "honesty"))
    base = {tm: tms[tm]["baseline"]["trait"] for tm in tms}
    assert round(100 * base["refusal"]) == 9 and round(100 * refusal["SwFC"]["trait"]) == 22
    assert refusal["SwFC"]["p_vs_baseline"] == pytest.approx(0.019, abs=5e-4)
    assert refusal["SwFC"]["p_vs_baseline_holm"] >= 0.05  # not significant after Holm
    assert refusal["SwFC"]["p_vs_prompting"] > 0.5 and refusal["SwFC"]["p_vs_random_holm"] < 0.05
    assert round(100 * tms["refusal"]["controls"]["prompting"]["trait"]) == 20
    assert refusal["SwFC"]["capability"] < tms["refusal"]["baseline"]["capability"] - 0.1
    assert all(r["p_vs_baseline"] >= 0.05 for m, r in refusal.items() if m != "SwFC")
    assert round(100 * base["compassion"]) == 27
    assert all(r["trait"] == 0.0 and r["p_vs_baseline"] < 1e-7 for r in compassion.values())
    assert all(r["p_vs_random"] > 0.9 for r in compassion.values())
    assert round(100 * base["honesty"]) == 78
    assert all(
        r["trait"] < base["honesty"] and r["p_vs_baseline"] < 1e-6 and r["p_vs_random"] >= 0.1
        for r in honesty.values()
    )
    assert [round(100 * r["trait"]) for r in honesty.values()] == [46, 33, 49]
    chosen = {tm: tms[tm]["chosen"] for tm in tms}
    assert chosen["refusal"]["layer"] == 13 and chosen["honesty"]["decision_shift_ci"][0] < 0
    assert all(not t["verdict"].startswith("yes") for e in tms.values() for t in e["tradeoff"].values())
    robust = report["robustness"]
    unsteered = {(r["threat_model"], r["setting"]): r["trait"] for r in robust if r["method"] == "baseline"}
    steered = [r for r in robust if r["method"] not in ("baseline", "prompting")]
    raised = [
        (r["setting"], r["method"], r["direction_from"])
        for r in steered
        if r["p_vs_baseline"] < 0.05 and r["trait"] > unsteered[(r["threat_model"], r["setting"])]
    ]
    assert raised == [("organism:dishonest", "SwFC", "organism")]
    organism = next(r for r in steered if (r["method"], r["direction_from"]) == ("SwFC", "organism"))
    assert round(100 * organism["trait"]) == 50 and organism["p_vs_baseline"] == pytest.approx(
        0.0013, abs=1e-4
    )
    assert round(100 * unsteered[("honesty", "organism:dishonest")]) == 38
    page = " ".join(PAGE.read_text().split())
    assert "[how it was run](study/README.md)" in page and (ROOT / "docs" / "study" / "README.md").is_file()
    for said in (
        "SwFC raises refusals from 9.4% to 21.7% [14.9-30.5] (p = 0.019, Holm 0.135",
        "all give 0.0% [0.0-3.8] (p = 3.0e-08",
        "SwFC gives 45.9%, StTP 33.0%, StMP 48.6%",
        "to 50% [41-60] (p = 0.001",
        "is **not met**",
    ):
        assert said in page, said
    readme = " ".join((ROOT / "README.md").read_text().split())
    n = sorted(e["baseline"]["n_eval"] for e in tms.values())
    kl = report["config"]["kl_budgets"]
    for said in (
        f"matched KL of {kl[0]:g} nats/token and {n[0]}-{n[-1]} test prompts per condition",
        "SwFC raises refusal from 9% [5-17] to 22% [15-30] (p = 0.019, not significant after Holm's adjustment",
        "compassion (27% [19-37] to 0% [0-4]) and honesty (78% [69-85] to 33-49%, each p < 1e-6)",
        "(38% [29-47] to 50% [41-60], p = 0.001",
        "[docs/results.md](docs/results.md)",
    ):
        assert said in readme, said
