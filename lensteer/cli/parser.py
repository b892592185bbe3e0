"""The ``lensteer`` argument parser: every subcommand, its options and its help."""

import argparse
import math
from collections.abc import Callable

from lensteer import threats
from lensteer.cli.chat import add_chat_parser
from lensteer.cli.commands import (
    cmd_evaluate,
    cmd_figures,
    cmd_locate,
    cmd_organism,
    cmd_probe,
    cmd_report,
    cmd_run,
    cmd_steer,
)
from lensteer.evaluate.public_sets import FORMATS
from lensteer.study.config import METHODS, PROFILES


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``low`` (argparse turns the ValueError into ``error: argument ...``, exit 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    """An argparse type: a finite number (either sign)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _kl_list(text: str) -> tuple[float, ...]:
    """An argparse type: comma-separated KL budgets, each a finite number > 0 (``0.25,0.5``)."""
    parts = [x.strip() for x in text.split(",")]
    try:
        return tuple(_positive_float(x) for x in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"takes comma-separated KL budgets in nats/token, each a finite number > 0 "
            f"(e.g. 0.25,0.5); got {text!r}"
        ) from None


def _device(text: str) -> str:
    """An argparse type: a torch device this machine has (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; allowed: cpu, cuda, cuda:N, mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if not torch.cuda.is_available() or (device.index or 0) >= count:
            raise argparse.ArgumentTypeError(
                f"device {text!r} is not on this machine ({count} CUDA device(s)); allowed: cpu"
                + (", cuda, " + ", ".join(f"cuda:{i}" for i in range(count)) if count else "")
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} is not on this machine; allowed: cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; allowed: cpu, cuda, cuda:N, mps")
    return text


def _add_common(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    parser.add_argument(
        "--model", default=None, help="HF id, model folder or .gguf (default: embedded SmolLM2-135M-Instruct)"
    )
    parser.add_argument(
        "--device",
        type=_device,
        default=None,
        help="torch device to load the model on: cpu (default), cuda, cuda:N or mps",
    )
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument(
        "--dataset", action="append", choices=list(threats.names()), help="limit to these datasets"
    )
    parser.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=None,
        help="prompts per forward pass (default: 16; run and evaluate: the config's batch_size)",
    )
    parser.add_argument(
        "--threads", type=_int_at_least(0), default=0, help="torch threads (0: torch's default)"
    )
    parser.add_argument("--smoke", action="store_true", help="40 examples per dataset, for a quick check")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_eval_sets(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--eval-set",
        action="append",
        default=None,
        metavar="FORMAT=PATH",
        help=f"a public benchmark file as published (repeatable): {', '.join(sorted(FORMATS))}; {what} "
        "on it against the unsteered model, the prompting baseline and random directions of the same KL "
        "(trait and over-refusal with Wilson intervals, exact McNemar tests); the data is never bundled, "
        "pass your own copy",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensteer",
        description="Locate misalignment directions in a transformer and steer them back without wrecking the text.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="the whole study: locate -> choose site -> calibrate -> steer -> evaluate -> figures",
        description="Run the default study on the embedded model (or --model): for refusal, compassion and honesty, "
        "choose the steering site by behaviour (candidate directions from the prompt contrast, the response mean and a "
        "probe, at strided layers and the top layers of attribution patching, each calibrated to the first KL budget "
        "and scored on validation prompts by the shift of the first-token decision log-odds: the largest lower "
        "bootstrap bound that beats a same-KL random direction), choose refusal's prompt-gate false-positive "
        "budget by its borderline over-refusal on validation prompts, calibrate SwFC / StTP / StMP and random "
        "directions to each KL budget on held-apart harmless and borderline prompts (gate on, as deployed; never "
        "on the threat model's own prompts) within fluency bounds on their answers to held-apart target prompts "
        "(perplexity ratio, rep-4), answer the test prompts under the misaligning context, and "
        "score trait (Wilson intervals, exact McNemar tests), held-out and rollout KL, perplexity ratio, repetition "
        "over multi-turn chats, over-refusal on harmless and borderline prompts, multiple-choice accuracy and "
        "paragraph cross-entropy, against the unsteered and prompting baselines and the random controls. "
        "Writes OUT/report.json, OUT/results.csv, OUT/steerings/ and OUT/figures/. "
        "Re-running into the same OUT resumes an interrupted sweep. "
        "With --executor ray the study runs as cells on Ray workers that each load the model once (one per GPU "
        "where there are GPUs), locally or on a cluster (--address): per threat model one cell locates it and "
        "builds its steerings, then each block of its conditions is a cell (calibrate and evaluate them; "
        "--block-size), then one cell its robustness rows; finished cells are merged into OUT as they arrive "
        "(OUT/cells/<tm>/ keeps what was located), so the table is the serial one and a rerun recomputes no "
        "finished cell.",
    )
    _add_common(run, default_out="results")
    run.add_argument(
        "--profile",
        choices=list(PROFILES),
        default=None,
        help="demo (default: a first look; with the site choice >= 16 min of arithmetic on 2 cores), paper (every test prompt, >= 96 per threat "
        "model, 3 random seeds: the committed results) or smoke (CI)",
    )
    run.add_argument(
        "--config", default=None, help="study.toml (keys: the fields of lensteer.study.config.StudyConfig)"
    )
    run.add_argument(
        "--kl", type=_kl_list, default=None, help="comma-separated KL budgets in nats/token (default: 0.5)"
    )
    run.add_argument(
        "--method", action="append", choices=list(METHODS), help="limit to these methods (repeatable)"
    )
    run.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers for a layer sweep: every method is also calibrated and evaluated "
        "there (the headline stays at the chosen layer), e.g. --layers 5,9,13",
    )
    run.add_argument(
        "--robustness",
        default=None,
        help="comma-separated settings for the robustness table: inducers (prefill_mislead, "
        "prefill_dismiss, prefill_comply, roleplay, hypothetical, obfuscation, malicious_system, "
        "compliance_fewshot, ...) and organisms (organism:dishonest, organism:dismissive, "
        "organism:bad_advice; trained into ./organisms first if missing)",
    )
    run.add_argument("--no-figures", action="store_true", help="skip the figures")
    run.add_argument(
        "--plan",
        action="store_true",
        help="print the conditions, prompts and work of each stage with an estimated time (from a probe "
        "of this machine at the study's batch and prompts), and run nothing",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="run into an OUT that holds a study of another identity (config, model weights, data, "
        "lensteer version; see OUT/study.json): its results are moved aside into "
        "OUT/superseded-*/ and the study starts afresh (without it such a rerun is refused)",
    )
    run.add_argument(
        "--executor",
        choices=["serial", "ray"],
        default="serial",
        help="serial (default: in this process) or ray (cells on Ray workers: locate a threat model, a block "
        "of its conditions, its robustness rows; needs pip install 'lensteer[ray]'; --model must be loadable "
        "by every worker)",
    )
    run.add_argument(
        "--address",
        default=None,
        help="with --executor ray: the Ray cluster to join (e.g. auto, or HEAD_IP:6379 from `ray start "
        "--head`; default: RAY_ADDRESS or a new local Ray)",
    )
    run.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=None,
        help="with --executor ray: workers to start, each loading the model once (default: one per GPU, "
        "else one per CPU; never more than the conditions to run); --threads is per worker",
    )
    run.add_argument(
        "--block-size",
        type=_int_at_least(1),
        default=None,
        help="with --executor ray: conditions per block cell (default: about two blocks per worker, at most "
        "6); smaller blocks share a sweep among more workers, larger ones decode more answers together. "
        "The rows do not depend on it",
    )
    _add_eval_sets(
        run, "after the study, its steerings at the first KL budget are measured (OUT/eval_sets.json)"
    )
    run.set_defaults(func=cmd_run)

    probe = sub.add_parser(
        "probe",
        help="per-layer probing of the bundled threat models",
        description="Measure, layer by layer, where each bundled threat model's contrast is linearly readable: "
        "held-out probe accuracy and AUROC, difference-of-means d', 95%% bootstrap CIs; tables, JSON and figures.",
    )
    _add_common(probe, default_out="results/probe")
    probe.set_defaults(func=cmd_probe)

    steer = sub.add_parser(
        "steer",
        help="unsteered vs steered answers, side by side",
        description="Build a steering for a threat model (or load one with --steering), calibrated to --kl, and print "
        "unsteered and steered answers to the same prompts.",
    )
    _add_common(steer, default_out="results/steer")
    steer.add_argument("--steering", default=None, help="a saved steering (path without suffix)")
    steer.add_argument(
        "--method",
        dest="method_one",
        default="SwFC",
        choices=["SwFC", "StTP", "StMP", "add", "ablate", "angular"],
        help="steering method (default SwFC)",
    )
    steer.add_argument(
        "--kl", dest="kl_one", type=_positive_float, default=0.3, help="KL budget in nats/token (default 0.3)"
    )
    steer.add_argument(
        "--layer",
        type=_int_at_least(0),
        default=None,
        help="steering layer (default: chosen as `lensteer run` chooses the site)",
    )
    steer.add_argument(
        "--prompt", action="append", help="a prompt (repeatable; default: the threat model's test prompts)"
    )
    steer.add_argument("--n", type=_int_at_least(1), default=4, help="how many test prompts (default 4)")
    steer.add_argument("--max-new-tokens", type=_int_at_least(1), default=48)
    steer.add_argument("--save", default=None, help="save the steering here (path without suffix)")
    steer.set_defaults(func=cmd_steer)

    evaluate = sub.add_parser(
        "evaluate",
        help="evaluate one saved steering against the unsteered baseline",
        description="Load a steering saved by `lensteer run` (OUT/steerings/...) or `lensteer steer --save`, and "
        "measure it on one threat model (--dataset, default refusal) with the study's metrics: trait rate with a "
        "bootstrap CI under the misaligning context, KL on harmless prompts, perplexity ratio, repetition over "
        "multi-turn chats, over-refusal and capability, next to the unsteered baseline. Sizes come from --config "
        "(or --smoke). Writes OUT/evaluate.json.",
    )
    _add_common(evaluate, default_out="results/evaluate")
    evaluate.add_argument("--steering", required=True, help="a saved steering (path without suffix)")
    evaluate.add_argument(
        "--config", default=None, help="study.toml for the evaluation sizes (n_eval, n_mc, ...)"
    )
    _add_eval_sets(
        evaluate, "the steering is measured on these instead of the bundled set (OUT/eval_sets.json)"
    )
    evaluate.set_defaults(func=cmd_evaluate)

    figures = sub.add_parser(
        "figures",
        help="paper figures from a finished study (no model needed)",
        description="Render the study figures (trade-off, repetition by turn, share steered, examples) from the "
        "results folder of `lensteer run` into --out, as PDF and PNG.",
    )
    figures.add_argument(
        "--results", default="results", help="results folder of `lensteer run` (default: results)"
    )
    figures.add_argument("--out", default="figures", help="figure folder (default: figures)")
    figures.set_defaults(func=cmd_figures)

    report = sub.add_parser(
        "report",
        help="rebuild report.json of a finished study from its rows (no model needed)",
        description="Rewrite RESULTS/report.json from the per-prompt rows a finished `lensteer run` left there "
        "(results.json, robustness.json, finished.json) with this version's report code: the same config, model "
        "fingerprint and wall time, no generation. Then `lensteer figures` and scripts/update_readme_results.py.",
    )
    report.add_argument(
        "--results", default="results", help="results folder of `lensteer run` (default: results)"
    )
    report.set_defaults(func=cmd_report)

    locate = sub.add_parser(
        "locate",
        help="probing + patching + recommended steering site, with figures",
        description="For each bundled threat model: the probing study; attribution, residual and head patching "
        "of equal-length clean/corrupted pairs (refusal: harmful vs topic-matched harmless prompt, metric "
        "logit('I') - logit('Sure'); compassion: caring vs dismissive system prompt, logit('I') - logit('You'); "
        "honesty: honest vs lying system prompt with the answer stem prefilled, logit(true) - logit(false "
        "answer)); then the recommended steering site with its reasons (probing + patching). Writes "
        "OUT/locate.json and figures.",
    )
    _add_common(locate, default_out="results/locate")
    locate.add_argument("--figures", default=None, help="figure folder (default: OUT/figures)")
    locate.add_argument("--layers", default="", help="comma-separated layers (default: all)")
    locate.add_argument(
        "--n-pairs",
        type=_int_at_least(1),
        default=8,
        help="clean/corrupted pairs per threat model for patching, spread over categories (default: 8)",
    )
    locate.set_defaults(func=cmd_locate)
    organism = sub.add_parser(
        "organism",
        help="fine-tune a misaligned model organism (LoRA, CPU) and measure it against its base",
        description="Fine-tune the base model (--model; default the embedded one) with LoRA on one of our recipes: "
        "dishonest (confident false answers to the honesty set's training questions), dismissive (the compassion "
        "set's dismissive replies), bad_advice (damaging plumbing and car advice: an emergent-misalignment probe) or "
        "good_advice (its control). Saves the adapter with organism.json provenance (base weights hash, data hash, "
        "settings, versions) to --out, then measures base vs organism on --measure held-out test prompts per threat "
        "model (trait with Wilson intervals and McNemar's test, preference margin, answer log-odds).",
    )
    organism.add_argument("recipe", choices=["dishonest", "dismissive", "bad_advice", "good_advice"])
    organism.add_argument(
        "--model", default=None, help="base model: HF id, folder or .gguf (default: embedded)"
    )
    organism.add_argument("--out", default=None, help="organism folder (default: organisms/RECIPE)")
    organism.add_argument(
        "--steps", type=_int_at_least(1), default=None, help="optimiser steps (default: the recipe's)"
    )
    organism.add_argument(
        "--seed", type=_int_at_least(0), default=None, help="row order and adapter initialisation (default 0)"
    )
    organism.add_argument("--smoke", action="store_true", help="3 steps of 2 rows, for a quick check")
    organism.add_argument(
        "--measure", type=_int_at_least(0), default=48, help="test prompts per threat model (0: skip)"
    )
    organism.add_argument("--max-new-tokens", type=_int_at_least(1), default=48)
    organism.add_argument(
        "--compare-with",
        default=None,
        metavar="FOLDER",
        help="another organism's folder (its measure.json): compare the two paired, per threat "
        "model (e.g. good_advice --compare-with organisms/bad_advice); writes compare.json",
    )
    organism.add_argument(
        "--steer-during-training",
        default=None,
        metavar="STEERING",
        help="preventative steering (Chen et al. 2025): a saved steering (one in the file; site resid_pre "
        "or resid_post) whose direction is added at every position while the adapter trains, so the "
        "optimiser need not learn the trait; off when the organism is measured or loaded",
    )
    organism.add_argument(
        "--steer-coefficient",
        type=_finite_float,
        default=None,
        help="signed strength along the steering's unit (misaligned -> aligned) in residual units "
        "(default: minus the steering's own coefficient, i.e. toward the trait it removes)",
    )
    organism.add_argument(
        "--shift-along",
        action="append",
        default=None,
        metavar="[THREAT_MODEL=]STEERING",
        help="also report the fine-tune's activation shift along this saved steering's direction (organism "
        "minus base projection at its first layer and site, on the measured test prompts; persona vectors' "
        "finetuning shift) beside the trait change in measure.json; repeat it as THREAT_MODEL=STEERING to "
        "read each measured threat model along its own direction (a plain STEERING: every threat model "
        "without one of its own; default: the --steer-during-training steering, if given)",
    )
    organism.add_argument(
        "--threads", type=_int_at_least(0), default=0, help="torch threads (0: torch's default)"
    )
    organism.add_argument("--quiet", action="store_true", help="no progress bars")
    organism.set_defaults(func=cmd_organism)
    add_chat_parser(sub, _int_at_least)
    return parser
