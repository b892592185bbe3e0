import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

import lensteer
from lensteer import plotting
from lensteer.cli import build_parser, main
from lensteer.study.runner import chosen_steering


def _report():
    g = torch.Generator().manual_seed(0)
    acts = {
        f"{c}_{s}": torch.randn(20, 3, 8, generator=g) + (1.0 if c == "pos" else 0.0)
        for c in ("pos", "neg")
        for s in ("train", "val", "test")
    }
    return lensteer.locate.probe_layers(acts, layers=[0, 1, 2], dataset="toy", contrast="prompt", n_boot=20)


@pytest.mark.parametrize(
    "fn", [plotting.plot_probing, plotting.plot_direction_cosines, plotting.plot_method_cosines]
)
def test_figures_have_labelled_axes_and_save_as_pdf_and_png(fn, tmp_path):
    fig, ax = fn(_report())
    assert ax.get_xlabel() == "layer" and ax.get_ylabel() and ax.get_title().startswith("toy")
    pdf, png = plotting.save_figure(fig, tmp_path / "sub" / "fig")
    plt.close(fig)
    assert pdf.read_bytes().startswith(b"%PDF") and png.read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "sub").glob(".*"))  # atomic writes leave no temporaries


def test_plot_probing_draws_a_report():
    fig, ax = lensteer.plotting.plot_probing(_report())
    assert len(ax.get_lines()) >= 4
    plt.close(fig)


def test_cli_help_teaches_and_bad_dataset_is_rejected(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--dataset", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    help_text = build_parser().format_help()
    for command in ("run", "probe", "locate", "steer", "evaluate", "figures"):  # every subcommand is listed
        assert f"    {command} " in help_text, command


@pytest.fixture(scope="module")
def tiny_model_folder(tmp_path_factory, tiny_tokenizer):
    """A 2-layer random Llama saved as a Hugging Face folder, loadable by path like a user's model."""
    from builders import save_tiny_llama_folder

    return save_tiny_llama_folder(tmp_path_factory.mktemp("tiny_model"), tiny_tokenizer)


def test_cli_probe_smoke_on_a_tiny_model_folder(tmp_path, tiny_model_folder, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "probe",
                "--model",
                str(tiny_model_folder),
                "--out",
                str(out),
                "--smoke",
                "--quiet",
                "--dataset",
                "refusal",
            ]
        )
        == 0
    )
    report = json.loads((out / "probing.json").read_text())
    assert list(report["reports"]) == ["refusal"] and len(report["reports"]["refusal"]["rows"]) == 2
    assert (out / "figures" / "probing_refusal.pdf").is_file()
    assert "best layer by probe AUROC" in capsys.readouterr().out


def test_cli_run_the_whole_study_smoke_then_steer_side_by_side(tmp_path, tiny_model_folder, capsys):
    out = tmp_path / "study"
    advbench = tmp_path / "harmful_behaviors.csv"  # invented rows in AdvBench's layout
    advbench.write_text("goal,target\nWrite a rude poem about the mayor,Sure\nSteal the cake,Sure\n")
    assert (
        main(
            [
                "run",
                "--model",
                str(tiny_model_folder),
                "--out",
                str(out),
                "--smoke",
                "--quiet",
                "--dataset",
                "refusal",
                "--method",
                "SwFC",
                "--eval-set",
                f"advbench={advbench}",
            ]
        )
        == 0
    )
    public = json.loads((out / "eval_sets.json").read_text())["eval_sets"]["advbench:harmful_behaviors.csv"]
    # the study's own steerings and random control, on the public file
    assert list(public["conditions"]) == ["baseline", "prompting", "SwFC", "random:0"]
    assert (
        public["conditions"]["SwFC"]["n_trait"] == 2 and "trait_p_vs_random" in public["conditions"]["SwFC"]
    )
    report = json.loads((out / "report.json").read_text())
    entry = report["threat_models"]["refusal"]
    assert {"trait", "trait_ci", "kl", "perplexity_ratio", "repetition", "over_refusal"} <= set(
        entry["methods"]["SwFC"]
    )
    assert (out / "results.csv").is_file() and list((out / "steerings").glob("*.safetensors"))
    assert "| refusal | SwFC |" in capsys.readouterr().out
    saved = str(chosen_steering(out, "refusal", "SwFC", 0.5))  # refusal_SwFC_kl0.5_L<layer>_<identity hash>
    assert (
        main(
            [
                "steer",
                "--model",
                str(tiny_model_folder),
                "--steering",
                saved,
                "--prompt",
                "hi there",
                "--max-new-tokens",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "PROMPT: hi there" in printed and "unsteered |" in printed
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tiny_model_folder),
                "--steering",
                saved,
                "--smoke",
                "--quiet",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    evaluated = json.loads((tmp_path / "eval" / "evaluate.json").read_text())["threat_models"]["refusal"]
    # the refusal gate (5% false positives) stays shut on most harmless prompts, so the steering's
    # effect shows along its own rollouts of the harmful prompts
    label = Path(saved).name  # evaluate names the method after the steering file
    assert evaluated["methods"][label]["kl_rollout"] > 0 and evaluated["baseline"]["kl"] == 0.0
    assert f"| refusal | {label} |" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("n_evals = 3\n")
    assert (
        main(["run", "--model", str(tiny_model_folder), "--config", str(bad), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "unknown key(s) ['n_evals']" in capsys.readouterr().err


def test_cli_reports_lensteer_errors_without_a_traceback(tmp_path, capsys):
    assert main(["run", "--model", str(tmp_path / "missing.gguf"), "--out", str(tmp_path)]) == 2
    assert "lensteer: error: GGUF file" in capsys.readouterr().err
    assert main(["run", "--layers", "5,nine", "--out", str(tmp_path)]) == 2  # checked before any model loads
    assert (
        "--layers takes comma-separated layer indices, e.g. 5,9,13; got '5,nine'" in capsys.readouterr().err
    )


def test_patching_figures(tiny_bridge, tmp_path):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 64, (3, 5), generator=g)
    corrupted = clean.clone()
    corrupted[:, 1] = 7
    metric = lensteer.locate.logit_diff_metric(1, 2)
    exact = lensteer.patch_residual(tiny_bridge, clean, corrupted, metric)
    heads = lensteer.locate.patch_heads(tiny_bridge, clean, corrupted, metric)
    approx = lensteer.attribute_residual(tiny_bridge, clean, corrupted, metric)
    for fig, ax in (
        plotting.plot_patching(exact),
        plotting.plot_patching(heads),
        plotting.plot_attribution_vs_exact(approx, exact),
    ):
        assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
        plotting.save_figure(fig, tmp_path / "p")
        plt.close(fig)
    fig, ax = plotting.plot_patching(exact)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(i) for i in range(5)]
    plt.close(fig)


def test_cli_locate_smoke_on_a_tiny_model_folder(tmp_path, tiny_model_folder, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "locate",
            "--model",
            str(tiny_model_folder),
            "--out",
            str(out),
            "--smoke",
            "--quiet",
            "--dataset",
            "refusal",
            "--n-pairs",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "locate.json").read_text())
    refusal = summary["refusal"]
    assert {"probing", "recommendation"} <= set(refusal)
    assert (out / "figures" / "probing_refusal.png").is_file()
    printed = capsys.readouterr().out
    # a character-level tokenizer gives one equal-length harmful/harmless pair among the 40 smoke rows
    assert refusal["patching"]["pairs"]["ids"] == ["refusal-dangerous_chemistry-01"]
    assert "refusal patching (1 pairs;" in printed
    # a random 2-layer model has no readable refusal direction: no layer passes the probe rule, and it says so
    assert "refusal: no recommendation: no layer passes the selection rules" in printed
    assert "probe AUROC lower bound" in refusal["recommendation"]["error"]
