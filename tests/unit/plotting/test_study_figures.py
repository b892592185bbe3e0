"""Study figures from synthetic study rows (no model): files, labels, the Pareto front, the CLI."""

import json
import logging

import matplotlib.pyplot as plt
import pytest

from lensteer import plotting
from lensteer.cli import main
from lensteer.errors import ConfigError, DataError

THREAT_MODELS = ("refusal", "compassion", "honesty")
METHODS = ("SwFC", "StTP", "StMP")
BUDGETS = (0.1, 0.3, 1.0)


def _row(tm, method, budget, trait, kl, *, share=1.0, n_turns=4):
    lo, hi = max(0.0, trait - 0.2), min(1.0, trait + 0.15)
    return {
        "threat_model": tm,
        "method": method,
        "kl_budget": budget,
        "layer": 12,
        "trait": trait,
        "trait_ci": [lo, hi],
        "kl": kl,
        "perplexity_ratio": 1.0 + kl,
        "repetition": 0.05 * kl,
        "over_refusal": 0.0,
        "over_refusal_ci": [0.0, 0.0],
        "capability": 0.5,
        "steered_share": share,
        "harmless_steered_share": share / 2,
        "repetition_by_turn": [0.02 * t * (1 + kl) for t in range(n_turns)],
        "rep4_history_by_turn": [0.0, *[0.1 * t * kl for t in range(1, n_turns)]],
    }


def synthetic_rows():
    """A full sweep: baseline, three methods at three budgets and the random control per threat model."""
    rows = []
    for i, tm in enumerate(THREAT_MODELS):
        rows.append(_row(tm, "baseline", None, 0.1 * i, 0.0, share=0.0))
        for j, method in enumerate(METHODS):
            for budget in BUDGETS:
                trait = min(1.0, 0.1 * i + budget * (0.5 + 0.2 * j))
                rows.append(
                    _row(
                        tm,
                        method,
                        budget,
                        trait,
                        budget * (0.95 + 0.05 * j),
                        share=1.0 if method == "SwFC" else 0.4 + 0.1 * j,
                    )
                )
        rows.append(_row(tm, "random", BUDGETS[0], 0.1 * i, 0.12, share=1.0))
    return rows


def synthetic_examples():
    text = (
        "I can't help with that, but here is a long answer that has to wrap over several lines of the "
        "figure so that the layout is tested with $dollar signs$ and an emoji \U0001f600 too."
    )
    return {
        tm: {
            cond: {
                "prompts": [f"Prompt {k} for {tm}?" for k in range(4)],
                "texts": [text] * 4,
                "harmless_prompts": ["Hi?"],
                "harmless_texts": ["Hello."],
            }
            for cond in ("baseline", "SwFC@0.1", "StTP@0.1", "StMP@0.1", "SwFC@0.3", "random")
        }
        for tm in THREAT_MODELS
    }


_SITE_CHOICE = {  # the site choice's report keys (lensteer.study.site_choice), two candidates
    "candidates": [
        {
            "source": src,
            "layer": layer,
            "position": pos,
            "decision_shift": d,
            "decision_shift_ci": [d - 0.1, d + 0.1],
        }
        for src, layer, pos, d in (
            ("prompt_contrast", 4, "post_instruction[-1]", 0.8),
            ("probe", 7, "response_mean", 0.2),
        )
    ],
    "chosen": {"source": "prompt_contrast", "layer": 4, "position": "post_instruction[-1]", "why": "largest"},
}


def _results_folder(path, rows=None, examples=True, report=True):
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"rows": rows if rows is not None else synthetic_rows()}))
    if examples:
        (path / "examples.json").write_text(json.dumps(synthetic_examples()))
    if report:
        (path / "report.json").write_text(
            json.dumps(
                {
                    "lensteer_version": "0",
                    "model": {"name": "tiny"},
                    "config": {},
                    "seconds": 1.0,
                    "alpha": 0.05,
                    "matched_kl_budget": 0.1,
                    "threat_models": {
                        tm: {
                            "layer": 7,
                            "steerability": {
                                "kl_budget": 0.1,
                                "effect": {"4": 0.2, "7": 0.9 - 0.1 * i, "10": 0.5},
                            },
                            **(_SITE_CHOICE if tm == "refusal" else {}),
                        }
                        for i, tm in enumerate(THREAT_MODELS)
                    },
                }
            )
        )
    return path


# -- the Pareto front ------------------------------------------------------------------------------


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    points = [(0.0, 0.1), (0.3, 0.5), (0.3, 0.4), (0.2, 0.6), (1.0, 0.6), (1.2, 0.9), (0.5, 0.2), (0.0, 0.1)]
    # (0.3, 0.5) and (0.3, 0.4) lose to (0.2, 0.6); (1.0, 0.6) ties (0.2, 0.6)'s trait at higher KL;
    # (0.5, 0.2) loses to (0.2, 0.6); the duplicate (0.0, 0.1) appears once
    assert plotting.pareto_front(points) == [(0.0, 0.1), (0.2, 0.6), (1.2, 0.9)]


def test_pareto_front_edge_cases():
    assert plotting.pareto_front([]) == []
    assert plotting.pareto_front([(0.4, 0.3)]) == [(0.4, 0.3)]
    # same KL: only the better trait; same trait: only the cheaper KL
    assert plotting.pareto_front([(0.3, 0.2), (0.3, 0.7)]) == [(0.3, 0.7)]
    assert plotting.pareto_front([(0.5, 0.7), (0.3, 0.7)]) == [(0.3, 0.7)]
    # a strictly increasing chain is all front
    chain = [(0.1 * k, 0.2 * k) for k in range(5)]
    assert plotting.pareto_front(list(reversed(chain))) == chain


# -- the figures -----------------------------------------------------------------------------------


def test_tradeoff_draws_every_method_the_controls_and_the_front():
    rows = synthetic_rows()
    fig, ax = plotting.plot_tradeoff(rows, "compassion")
    assert ax.get_xlabel() == "KL to the unsteered model (nats/token)"
    assert ax.get_ylabel() == "compassionate-reply rate (fraction)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "unsteered" and labels[-1] == "Pareto front"
    assert {"SwFC", "StTP", "StMP", "random direction"} <= set(labels)
    # each method is one line through its three budgets, in budget order, at the measured KL
    mine = [r for r in rows if r["threat_model"] == "compassion"]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    lines |= {line.get_label(): line for line in ax.get_lines()}
    swfc = [r for r in mine if r["method"] == "SwFC"]
    assert list(lines["SwFC"].get_xdata()) == [r["kl"] for r in swfc]
    assert list(lines["SwFC"].get_ydata()) == [r["trait"] for r in swfc]
    # the front line passes through exactly the front points of every plotted condition
    front = plotting.pareto_front([(r["kl"], r["trait"]) for r in mine])
    xy = set(zip(lines["Pareto front"].get_xdata(), lines["Pareto front"].get_ydata(), strict=True))
    assert set(front) <= xy
    assert max(lines["Pareto front"].get_ydata()) == max(r["trait"] for r in mine)
    plt.close(fig)


def test_tradeoff_error_bars_are_the_rows_confidence_intervals():
    rows = [_row("honesty", "baseline", None, 0.5, 0.0), _row("honesty", "SwFC", 0.3, 0.8, 0.31)]
    rows[1]["trait_ci"] = [0.6, 0.9]
    fig, ax = plotting.plot_tradeoff(rows, "honesty")
    segments = next(c for c in ax.containers if c.get_label() == "SwFC").lines[2][0].get_segments()
    (x0, y0), (x1, y1) = segments[0]
    assert x0 == x1 == pytest.approx(0.31) and (y0, y1) == pytest.approx((0.6, 0.9))
    plt.close(fig)


def test_tradeoff_survives_missing_optional_fields_and_says_what_it_dropped(caplog):
    rows = synthetic_rows()
    for r in rows:
        r.pop("trait_ci")
    rows[1]["kl"] = None
    with caplog.at_level(logging.WARNING, logger="lensteer.plotting.study_figures"):
        fig, _ = plotting.plot_tradeoff(rows, "refusal")
    assert "no kl_heldout/trait" in caplog.text
    plt.close(fig)
    with pytest.raises(DataError, match="no rows for threat model 'nope'"):
        plotting.plot_tradeoff(rows, "nope")


def test_tradeoff_grid_has_one_panel_per_threat_model():
    fig, axes = plotting.plot_tradeoff_grid(synthetic_rows())
    assert [ax.get_title() for ax in axes] == [f"{tm}: alignment vs coherence" for tm in THREAT_MODELS]
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in axes)
    plt.close(fig)


def test_repetition_by_turn_one_line_per_condition_at_the_chosen_budget():
    rows = synthetic_rows()
    fig, ax = plotting.plot_repetition_by_turn(rows, "refusal", kl_budget=0.3)
    assert ax.get_xlabel() == "turn of the conversation" and "rep-4" in ax.get_ylabel()
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"unsteered", "SwFC", "StTP", "StMP", "random direction"}
    want = next(
        r for r in rows if (r["threat_model"], r["method"], r["kl_budget"]) == ("refusal", "StTP", 0.3)
    )
    assert list(lines["StTP"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["StTP"].get_ydata()) == pytest.approx(want["repetition_by_turn"])
    plt.close(fig)
    fig, axes = plotting.plot_repetition_by_turn(rows, metric="rep4_history_by_turn")
    assert len(axes) == 3 and "earlier turns" in axes[0].get_ylabel()
    plt.close(fig)
    with pytest.raises(ConfigError, match="metric must be one of"):
        plotting.plot_repetition_by_turn(rows, "refusal", metric="rep2")


def test_repetition_without_conversations_is_a_clear_error():
    rows = [{k: v for k, v in r.items() if not k.endswith("_by_turn")} for r in synthetic_rows()]
    with pytest.raises(DataError, match="without conversations"):
        plotting.plot_repetition_by_turn(rows, "honesty")


def test_steered_share_bars_match_the_rows():
    rows = synthetic_rows()
    fig, ax = plotting.plot_steered_share(rows, kl_budget=0.1)
    assert ax.get_ylabel() == "generated tokens steered (fraction)"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(THREAT_MODELS)
    heights = {c.get_label(): [b.get_height() for b in c] for c in ax.containers}
    want = [
        next(
            r["steered_share"]
            for r in rows
            if (r["threat_model"], r["method"], r["kl_budget"]) == (tm, "StMP", 0.1)
        )
        for tm in THREAT_MODELS
    ]
    assert heights["StMP, misaligned prompts"] == pytest.approx(want)
    assert heights["StMP, harmless prompts"] == pytest.approx([w / 2 for w in want])
    assert heights["SwFC, misaligned prompts"] == pytest.approx([1.0, 1.0, 1.0])
    plt.close(fig)
    # without the harmless share: one bar per method and threat model
    fig, ax = plotting.plot_steered_share(
        [{k: v for k, v in r.items() if k != "harmless_steered_share"} for r in rows]
    )
    assert not any("harmless" in c.get_label() for c in ax.containers)
    plt.close(fig)


def test_paper_rule_rows_share_their_methods_style_drawn_hollow_and_get_no_empty_share_bars():
    from lensteer.plotting.study_rows import style_of

    rows = synthetic_rows()
    paper = [
        {**r, "method": "StTP:paper", "kl_budget": None, "trait": 0.3}
        for r in rows
        if r["method"] == "StTP" and r["kl_budget"] == 0.1
    ]
    assert style_of("StTP:paper") == style_of("StTP") and style_of("StMP-push") != style_of("StMP")
    fig, ax = plotting.plot_steered_share(rows + paper, kl_budget=0.1)
    assert not any(
        "paper rule" in c.get_label() for c in ax.containers
    )  # no bar at this budget, so no legend entry
    plt.close(fig)
    fig, ax = plotting.plot_tradeoff(rows + paper, "refusal")
    marks = {c.get_label(): c.lines[0] for c in ax.containers}  # errorbar containers: data line first
    assert marks["StTP, paper rule (scale 1)"].get_markerfacecolor() == "none"
    assert marks["StTP"].get_markerfacecolor() != "none"
    left, right = ax.get_xlim()
    assert -0.05 * right < left < 0  # the KL axis starts at zero, with a small margin for the marks on it
    plt.close(fig)


def test_examples_table_shows_prompts_and_answers_without_math_parsing():
    fig, ax = plotting.plot_examples(synthetic_examples(), "refusal", n_prompts=2)
    texts = [t.get_text() for t in ax.texts]
    assert texts[:5] == ["prompt", "unsteered", "SwFC (KL 0.1)", "StTP (KL 0.1)", "StMP (KL 0.1)"]
    assert "Prompt 1 for refusal?" in " ".join(texts) and "Prompt 2 for refusal?" not in " ".join(texts)
    assert any("$dollar" in t for t in texts)  # shown literally, not as mathtext
    assert all(len(line) <= 34 for t in texts[5:] for line in t.split("\n"))
    plt.close(fig)
    fig, ax = plotting.plot_examples(synthetic_examples(), "honesty", conditions=["baseline", "random"])
    assert [t.get_text() for t in ax.texts][:3] == ["prompt", "unsteered", "random direction (control)"]
    plt.close(fig)
    with pytest.raises(DataError, match="not in the examples"):
        plotting.plot_examples(synthetic_examples(), "honesty", conditions=["baseline", "SwFC@9"])
    with pytest.raises(DataError, match="no examples for threat model"):
        plotting.plot_examples(synthetic_examples(), "nope")


def test_save_study_figures_writes_pdf_and_png_of_every_figure(tmp_path):
    folder = _results_folder(tmp_path / "results")
    paths = plotting.save_study_figures(folder, tmp_path / "figs")
    stems = {p.stem for p in paths}
    assert stems == {
        "tradeoff",
        "tradeoff_refusal",
        "tradeoff_compassion",
        "tradeoff_honesty",
        "repetition_by_turn",
        "repetition_history_by_turn",
        "steered_share",
        "steerability",
        "selection_refusal",
        "examples_refusal",
        "examples_compassion",
        "examples_honesty",
    }
    for p in paths:
        assert p.read_bytes()[:4] in (b"%PDF", b"\x89PNG")
    assert len(paths) == 2 * len(stems) and not list((tmp_path / "figs").glob(".*"))


def test_save_study_figures_skips_what_the_folder_lacks_and_says_why(tmp_path, caplog):
    rows = [{k: v for k, v in r.items() if not k.endswith("_by_turn")} for r in synthetic_rows()]
    folder = _results_folder(tmp_path / "results", rows=rows, examples=False, report=False)
    with caplog.at_level(logging.WARNING, logger="lensteer.plotting.study_figures"):
        paths = plotting.save_study_figures(folder, tmp_path / "figs")
    assert "repetition_by_turn" not in {p.stem for p in paths} and "tradeoff" in {p.stem for p in paths}
    assert (
        "skipped figure repetition_by_turn" in caplog.text and "examples.json does not exist" in caplog.text
    )
    with pytest.raises(DataError, match="results.json does not exist"):
        plotting.save_study_figures(tmp_path / "empty", tmp_path / "figs")


# -- the command line ------------------------------------------------------------------------------


def test_cli_figures_renders_a_results_folder(tmp_path, capsys):
    folder = _results_folder(tmp_path / "results")
    assert main(["figures", "--results", str(folder), "--out", str(tmp_path / "figs")]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "figs" / "tradeoff.png") in printed
    assert (tmp_path / "figs" / "examples_honesty.pdf").is_file()


def test_cli_figures_without_a_report_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert main(["figures", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert "report.json does not exist" in err and "lensteer run --out" in err
    assert not (tmp_path / "figs").exists()


def test_steerability_plot_draws_one_line_per_threat_model_and_circles_the_chosen_layer(tmp_path):
    report = json.loads((_results_folder(tmp_path / "r") / "report.json").read_text())
    fig, ax = plotting.plot_steerability(report)
    lines = [ln for ln in ax.get_lines() if ln.get_label() in THREAT_MODELS]
    assert [ln.get_label() for ln in lines] == list(THREAT_MODELS)
    assert list(lines[0].get_xdata()) == [4, 7, 10] and list(lines[0].get_ydata()) == [0.2, 0.9, 0.5]
    circled = [ln for ln in ax.get_lines() if ln.get_markersize() == 9]
    assert len(circled) == 3 and all(list(c.get_xdata()) == [7] for c in circled)
    assert "nats/token" in ax.get_ylabel() and "KL 0.1" in ax.get_title()
    plt.close(fig)
    with pytest.raises(DataError, match="no steerability"):
        plotting.plot_steerability({"threat_models": {"refusal": {"layer": 3}}})


def _robustness_rows():
    rows = []
    for setting, tm in (
        ("prefill_mislead", "honesty"),
        ("organism:dishonest", "honesty"),
        ("prefill_comply", "refusal"),
    ):
        for method, origin, trait in (
            ("baseline", "base", 0.2),
            ("SwFC", "base", 0.5),
            ("StTP", "base", 0.4),
        ):
            rows.append(
                {
                    "setting": setting,
                    "threat_model": tm,
                    "method": method,
                    "direction_from": origin,
                    "trait": trait,
                    "trait_ci": [trait - 0.1, trait + 0.1],
                    "kl_heldout": 0.3,
                }
            )
        if setting.startswith("organism:"):
            rows.append(
                {
                    "setting": setting,
                    "threat_model": tm,
                    "method": "SwFC",
                    "direction_from": "organism",
                    "trait": 0.7,
                    "trait_ci": [0.6, 0.8],
                    "kl_heldout": 0.4,
                }
            )
    return rows


def test_robustness_figure_puts_each_row_at_its_trait_with_its_interval():
    rows = _robustness_rows()
    fig, axes = plotting.plot_robustness(rows)
    honesty = axes[0][0]
    assert honesty.get_title() == "honesty" and [t.get_text() for t in honesty.get_yticklabels()] == [
        "prefill_mislead",
        "organism:dishonest",
    ]
    markers = [line for line in honesty.get_lines() if line.get_marker() not in (None, "None", "")]
    xs = sorted(round(float(line.get_xdata()[0]), 2) for line in markers)
    assert xs == [0.2, 0.2, 0.4, 0.4, 0.5, 0.5, 0.7]  # every honesty row, at its trait
    hollow = [line for line in markers if line.get_markerfacecolor() == "white"]
    assert [float(line.get_xdata()[0]) for line in hollow] == [0.7]  # the organism's own direction
    bars = [line for line in honesty.get_lines() if len(line.get_xdata()) == 2]
    assert sorted(tuple(round(float(v), 2) for v in line.get_xdata()) for line in bars)[-1] == (0.6, 0.8)
    assert [t.get_title() for t in axes[0]] == ["honesty", "refusal"]
    plt.close(fig)
    with pytest.raises(DataError, match="no robustness rows"):
        plotting.plot_robustness([])


def _measure(organism_rates, base_rates=(0.9, 0.5), ids=("a", "b")):
    return {
        "shifts": [
            {
                "threat_model": tm,
                "n": 48,
                "trait_base": b,
                "trait_base_ci": [b - 0.1, b + 0.05],
                "trait_organism": o,
                "trait_organism_ci": [o - 0.1, o + 0.1],
                "ids": list(ids),
            }
            for tm, b, o in zip(("compassion", "honesty"), base_rates, organism_rates, strict=True)
        ]
    }


def test_organism_figure_puts_the_base_and_each_organism_at_its_rate_with_its_interval():
    fig, axes = plotting.plot_organisms(
        {"good_advice": _measure((0.8, 0.3)), "bad_advice": _measure((0.45, 0.3))}
    )
    compassion = axes[0][0]
    assert [t.get_title() for t in axes[0]] == ["compassion (n = 48)", "honesty (n = 48)"]
    assert [t.get_text() for t in compassion.get_yticklabels()] == ["base", "good_advice", "bad_advice"]
    dots = [line for line in compassion.get_lines() if line.get_marker() == "o"]
    assert [(round(float(d.get_xdata()[0]), 2), int(d.get_ydata()[0])) for d in dots] == [
        (0.9, 0),
        (0.8, 1),
        (0.45, 2),
    ]
    bars = [
        tuple(round(float(v), 2) for v in line.get_xdata())
        for line in compassion.get_lines()
        if len(line.get_xdata()) == 2
    ]
    assert bars == [(0.8, 0.95), (0.7, 0.9), (0.35, 0.55)]
    plt.close(fig)
    with pytest.raises(DataError, match="no organism measurement"):
        plotting.plot_organisms({})
    other = {"shifts": _measure((0.8, 0.3))["shifts"][:1]}
    with pytest.raises(DataError, match="draw like with like"):
        plotting.plot_organisms({"good_advice": _measure((0.8, 0.3)), "one": other})
