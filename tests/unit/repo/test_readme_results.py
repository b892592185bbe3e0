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
    n_eval = next(iter(report["threat_models"].values()))["baseline"]["n_eval"]
    assert f"{n_eval} test prompts per condition" in line
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
