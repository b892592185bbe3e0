"""The ``lensteer`` command line.

``lensteer run`` runs the whole study on the embedded model (or ``--model``): locate -> choose the
site -> calibrate -> steer -> evaluate -> figures (:func:`lensteer.study.runner.run_study`; with ``--executor ray``
on Ray workers, :mod:`lensteer.study.distributed`). The stages have their own subcommands: ``probe`` (layer-by-layer probing), ``locate`` (probing + activation
patching + the recommended site, with figures), ``steer`` (unsteered vs steered text side by side),
``evaluate`` (one saved steering against the baseline), ``figures`` (from saved results) and ``organism``
(fine-tune a misaligned model organism and measure it against its base).
"""

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lensteer.core.datasets import THREAT_MODELS
from lensteer.core.io import write_json
from lensteer.study.config import METHODS, PROFILES


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Set threads, load the model and say what was loaded."""
    import torch

    import lensteer

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = lensteer.load_model(args.model)
    fp = lensteer.core.model_fingerprint(model)
    print(f"model: {fp.name} ({fp.n_layers} layers, d_model {fp.d_model}), loaded in {time.perf_counter() - start:.1f} s\n")
    return model, fp


def _datasets(args: argparse.Namespace) -> Iterator[tuple[str, Any, Any]]:
    """The study's (name, contrast side, dataset) triples that ``--dataset`` selects (40 rows with ``--smoke``)."""
    from lensteer.study.site_search import threat_model_datasets

    return threat_model_datasets(args.dataset, smoke=args.smoke)


def _cmd_probe(args: argparse.Namespace) -> int:
    import lensteer
    from lensteer.plotting.locate_figures import save_probing_figures

    start = time.perf_counter()
    model, fp = _load(args)
    reports = {}
    out = Path(args.out)
    for name, contrast, dataset in _datasets(args):
        report = lensteer.probe_by_layer(model, dataset, contrast=contrast, batch_size=args.batch_size,
                                         progress=not args.quiet)
        print(report.to_table(), "\n", flush=True)
        reports[name] = report.to_dict()
        save_probing_figures(report, out / "figures")
    write_json(out / "probing.json", {"model": fp.to_dict(), "reports": reports})
    print(f"wrote {out / 'probing.json'} and {out / 'figures'} in {time.perf_counter() - start:.0f} s")
    return 0


def _study_config(args: argparse.Namespace) -> Any:
    from lensteer.errors import ConfigError
    from lensteer.study.config import StudyConfig

    if args.config:
        config = StudyConfig.from_toml(args.config)
    else:
        config = StudyConfig.profile(getattr(args, "profile", None) or ("smoke" if args.smoke else "demo"))
    overrides: dict[str, Any] = {}
    if args.dataset:
        overrides["threat_models"] = tuple(args.dataset)
    if getattr(args, "kl", None):
        overrides["kl_budgets"] = tuple(float(x) for x in args.kl.split(","))
    if getattr(args, "method", None):
        overrides["methods"] = tuple(args.method)
    if getattr(args, "layers", None):
        try:
            overrides["sweep_layers"] = tuple(int(x) for x in args.layers.split(","))
        except ValueError:
            raise ConfigError(f"--layers takes comma-separated layer indices, e.g. 5,9,13; got {args.layers!r}") from None
    if getattr(args, "robustness", None):
        overrides["robustness"] = tuple(x.strip() for x in args.robustness.split(",") if x.strip())
        if getattr(args, "method", None):
            overrides["robustness_methods"] = tuple(m for m in args.method if m in ("SwFC", "StTP", "StMP"))
    if overrides:
        config = StudyConfig.from_dict({**config.to_dict(), **overrides})
    return config


def _cmd_run(args: argparse.Namespace) -> int:
    from lensteer.errors import ConfigError
    from lensteer.study.report import headline_table

    start = time.perf_counter()
    config = _study_config(args)
    out = Path(args.out)
    if args.executor == "ray":  # the workers load the model themselves
        from lensteer.study.distributed import run_study_distributed

        result = run_study_distributed(args.model, config, out, address=args.address, workers=args.workers,
                                       threads=args.threads or None, progress=not args.quiet)
    elif args.address is not None or args.workers is not None:
        raise ConfigError("--address and --workers go with --executor ray; the serial executor runs in this process")
    else:
        from lensteer.study.runner import run_study

        result = run_study(_load(args)[0], config, out, progress=not args.quiet)
    if not args.no_figures:
        from lensteer.plotting import save_study_figures

        save_study_figures(out, out / "figures")
    print("\n" + headline_table(result.report))
    print(f"\nwrote {out / 'report.json'}, {out / 'results.csv'}, {out / 'steerings'}"
          f"{'' if args.no_figures else ', ' + str(out / 'figures')} in {time.perf_counter() - start:.0f} s")
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from lensteer.plotting import save_study_figures

    results = Path(args.results)
    if not (results / "report.json").exists():
        from lensteer.errors import DataError

        raise DataError(f"{results / 'report.json'} does not exist; run `lensteer run --out {results}` first")
    paths = save_study_figures(results, Path(args.out))
    print("\n".join(str(p) for p in paths))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from lensteer.study import headline_table, rebuild_report

    report = rebuild_report(Path(args.results))
    print(headline_table(report))
    print(f"\nwrote {Path(args.results) / 'report.json'}")
    return 0


def _cmd_steer(args: argparse.Namespace) -> int:
    import lensteer
    from lensteer.study.config import StudyConfig
    from lensteer.study.evaluation import eval_prompts
    from lensteer.study.layers import build_steering

    model, _ = _load(args)
    if args.steering:
        steering = lensteer.load_steering(args.steering, model=model)
        name = args.dataset[0] if args.dataset else "refusal"
    else:
        name = args.dataset[0] if args.dataset else "refusal"
        config = StudyConfig(threat_models=(name,), methods=(args.method_one,), kl_budgets=(args.kl_one,),
                             layer=args.layer, n_kl=6)
        steering = build_steering(model, name, args.method_one, args.kl_one, config, progress=not args.quiet)
    prompts = list(args.prompt) if args.prompt else eval_prompts(name, args.n)
    table = lensteer.side_by_side(model, prompts, steering, max_new_tokens=args.max_new_tokens)
    print(table)
    if args.save:
        lensteer.save_steering(steering, args.save, model=model)
        print(f"saved the steering to {args.save}.safetensors / .json")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import lensteer
    from lensteer.study.evaluation import evaluate_steering
    from lensteer.study.report import headline_table

    start = time.perf_counter()
    config = _study_config(args)
    model, _ = _load(args)
    steering = lensteer.load_steering(args.steering, model=model)
    name = args.dataset[0] if args.dataset else "refusal"
    label = Path(args.steering).name
    report = evaluate_steering(model, steering, name, config, name=label)
    out = Path(args.out)
    write_json(out / "evaluate.json", report)
    print("\n" + headline_table(report))
    print(f"\nwrote {out / 'evaluate.json'} in {time.perf_counter() - start:.0f} s")
    return 0


def _cmd_organism(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    import lensteer
    from lensteer.organisms import get_recipe, load_organism, train_organism
    from lensteer.study.organisms import compare_organisms, measure_organism, read_measurement

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = get_recipe(args.recipe)
    lora = replace(recipe.lora, **{k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None})
    if args.smoke:
        lora = replace(lora, steps=3, batch_size=2)
    out = Path(args.out or f"organisms/{recipe.name}")
    other = read_measurement(args.compare_with) if args.compare_with else None  # checked before hours of training
    print(f"organism {recipe.name}: {recipe.description}; LoRA rank {lora.rank}, {lora.steps} steps of "
          f"{lora.batch_size} rows, lr {lora.learning_rate:g}")
    done = train_organism(recipe, out, base=args.model, lora=lora, progress=not args.quiet, log=print)
    print(f"saved {out} ({done.seconds:.0f} s, final loss {done.final_loss:.3f})")
    if args.measure <= 0:
        return 0
    base = lensteer.load_model(args.model)
    organism = load_organism(out)
    threat_models = [recipe.threat_model] if recipe.threat_model else None
    shifts = measure_organism(base, organism, threat_models, n=args.measure, max_new_tokens=args.max_new_tokens)
    for s in shifts:
        print(s.summary())
    measured = {"organism": str(out), "shifts": [s.to_dict() for s in shifts]}
    write_json(out / "measure.json", measured)
    print(f"wrote {out / 'measure.json'}")
    if other is not None:
        rows = compare_organisms(measured, other, (recipe.name, Path(args.compare_with).name))
        print("\n".join(c.summary() for c in rows))
        write_json(out / "compare.json", {"names": list(rows[0].names), "rows": [c.to_dict() for c in rows]})
        print(f"wrote {out / 'compare.json'}")
    return 0


def _cmd_locate(args: argparse.Namespace) -> int:
    from lensteer.plotting.locate_figures import save_site_search_figures
    from lensteer.study.site_search import search_site

    start = time.perf_counter()
    model, fp = _load(args)
    out, fig_dir = Path(args.out), Path(args.figures or Path(args.out) / "figures")
    summary: dict[str, object] = {"model": fp.to_dict()}
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    for name, contrast, dataset in _datasets(args):
        found = search_site(model, name, dataset, contrast, layers=layers, n_pairs=args.n_pairs,
                            batch_size=args.batch_size, progress=not args.quiet)
        print(found.probing.to_table(), "\n", flush=True)
        save_site_search_figures(found, fig_dir)
        if (line := found.patching_summary()) is not None:
            print(line, flush=True)
        for note in found.notes:
            print(f"{name}: {note}", flush=True)
        if found.recommendation is not None:
            print(found.recommendation, "\n", flush=True)
        summary[name] = found.to_dict()
    write_json(out / "locate.json", summary)
    print(f"wrote {out / 'locate.json'} and figures in {fig_dir} in {time.perf_counter() - start:.0f} s")
    return 0


def _add_common(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    parser.add_argument("--model", default=None, help="HF id, model folder or .gguf (default: embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--out", default=default_out, help=f"output folder (default: {default_out})")
    parser.add_argument("--dataset", action="append", choices=list(THREAT_MODELS), help="limit to these datasets")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--smoke", action="store_true", help="40 examples per dataset, for a quick check")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lensteer",
        description="Locate misalignment directions in a transformer and steer them back without wrecking the text.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="the whole study: locate -> choose site -> calibrate -> steer -> evaluate -> figures",
        description="Run the default study on the embedded model (or --model): for refusal, compassion and honesty, "
        "probe the response contrast to choose the steering layer, calibrate SwFC / StTP / StMP and random directions "
        "to each KL budget on harmless training prompts, answer the test prompts under the misaligning context, and "
        "score trait (Wilson intervals, exact McNemar tests), held-out and rollout KL, perplexity ratio, repetition "
        "over multi-turn chats, over-refusal on harmless and borderline prompts, multiple-choice accuracy and "
        "paragraph cross-entropy, against the unsteered and prompting baselines and the random controls. "
        "Writes OUT/report.json, OUT/results.csv, OUT/steerings/ and OUT/figures/. "
        "Re-running into the same OUT resumes an interrupted sweep. "
        "With --executor ray each threat model is a cell run by a Ray worker that loads the model once (one per GPU "
        "where there are GPUs), locally or on a cluster (--address); finished cells are merged into OUT as they "
        "arrive (OUT/cells/ keeps each), so the table is the serial one and a rerun recomputes no finished cell.",
    )
    _add_common(run, default_out="results")
    run.add_argument("--profile", choices=list(PROFILES), default=None,
                     help="demo (default: a first look, <= 15 min on 2 cores), paper (every test prompt, >= 96 per threat "
                          "model, 3 random seeds: the committed results) or smoke (CI)")
    run.add_argument("--config", default=None, help="study.toml (keys: the fields of lensteer.study.config.StudyConfig)")
    run.add_argument("--kl", default=None, help="comma-separated KL budgets in nats/token (default: 0.5)")
    run.add_argument("--method", action="append", choices=list(METHODS),
                     help="limit to these methods (repeatable)")
    run.add_argument("--layers", default=None,
                     help="comma-separated layers for a layer sweep: every method is also calibrated and evaluated "
                          "there (the headline stays at the chosen layer), e.g. --layers 5,9,13")
    run.add_argument("--robustness", default=None,
                     help="comma-separated settings for the robustness table: inducers (prefill_mislead, "
                          "prefill_dismiss, prefill_comply, roleplay, hypothetical, obfuscation, malicious_system, "
                          "compliance_fewshot, ...) and organisms (organism:dishonest, organism:dismissive, "
                          "organism:bad_advice; trained into ./organisms first if missing)")
    run.add_argument("--no-figures", action="store_true", help="skip the figures")
    run.add_argument("--executor", choices=["serial", "ray"], default="serial",
                     help="serial (default: in this process) or ray (threat models as cells on Ray workers; "
                          "needs pip install 'lensteer[ray]'; --model must be loadable by every worker)")
    run.add_argument("--address", default=None,
                     help="with --executor ray: the Ray cluster to join (e.g. auto, or HEAD_IP:6379 from `ray start "
                          "--head`; default: RAY_ADDRESS or a new local Ray)")
    run.add_argument("--workers", type=int, default=None,
                     help="with --executor ray: workers to start, each loading the model once (default: one per GPU, "
                          "else one per CPU; never more than the threat models to run); --threads is per worker")
    run.set_defaults(func=_cmd_run)

    probe = sub.add_parser(
        "probe", help="per-layer probing of the bundled threat models",
        description="Measure, layer by layer, where each bundled threat model's contrast is linearly readable: "
        "held-out probe accuracy and AUROC, difference-of-means d', 95%% bootstrap CIs; tables, JSON and figures.",
    )
    _add_common(probe, default_out="results/probe")
    probe.set_defaults(func=_cmd_probe)

    steer = sub.add_parser(
        "steer", help="unsteered vs steered answers, side by side",
        description="Build a steering for a threat model (or load one with --steering), calibrated to --kl, and print "
        "unsteered and steered answers to the same prompts.",
    )
    _add_common(steer, default_out="results/steer")
    steer.add_argument("--steering", default=None, help="a saved steering (path without suffix)")
    steer.add_argument("--method", dest="method_one", default="SwFC",
                       choices=["SwFC", "StTP", "StMP", "add", "ablate", "angular"], help="steering method (default SwFC)")
    steer.add_argument("--kl", dest="kl_one", type=float, default=0.3, help="KL budget in nats/token (default 0.3)")
    steer.add_argument("--layer", type=int, default=None, help="steering layer (default: chosen by probing)")
    steer.add_argument("--prompt", action="append", help="a prompt (repeatable; default: the threat model's test prompts)")
    steer.add_argument("--n", type=int, default=4, help="how many test prompts (default 4)")
    steer.add_argument("--max-new-tokens", type=int, default=48)
    steer.add_argument("--save", default=None, help="save the steering here (path without suffix)")
    steer.set_defaults(func=_cmd_steer)

    evaluate = sub.add_parser(
        "evaluate", help="evaluate one saved steering against the unsteered baseline",
        description="Load a steering saved by `lensteer run` (OUT/steerings/...) or `lensteer steer --save`, and "
        "measure it on one threat model (--dataset, default refusal) with the study's metrics: trait rate with a "
        "bootstrap CI under the misaligning context, KL on harmless prompts, perplexity ratio, repetition over "
        "multi-turn chats, over-refusal and capability, next to the unsteered baseline. Sizes come from --config "
        "(or --smoke). Writes OUT/evaluate.json.",
    )
    _add_common(evaluate, default_out="results/evaluate")
    evaluate.add_argument("--steering", required=True, help="a saved steering (path without suffix)")
    evaluate.add_argument("--config", default=None, help="study.toml for the evaluation sizes (n_eval, n_mc, ...)")
    evaluate.set_defaults(func=_cmd_evaluate)

    figures = sub.add_parser(
        "figures", help="paper figures from a finished study (no model needed)",
        description="Render the study figures (trade-off, repetition by turn, share steered, examples) from the "
        "results folder of `lensteer run` into --out, as PDF and PNG.",
    )
    figures.add_argument("--results", default="results", help="results folder of `lensteer run` (default: results)")
    figures.add_argument("--out", default="figures", help="figure folder (default: figures)")
    figures.set_defaults(func=_cmd_figures)

    report = sub.add_parser(
        "report", help="rebuild report.json of a finished study from its rows (no model needed)",
        description="Rewrite RESULTS/report.json from the per-prompt rows a finished `lensteer run` left there "
        "(results.json, robustness.json, finished.json) with this version's report code: the same config, model "
        "fingerprint and wall time, no generation. Then `lensteer figures` and scripts/update_readme_results.py.",
    )
    report.add_argument("--results", default="results", help="results folder of `lensteer run` (default: results)")
    report.set_defaults(func=_cmd_report)

    locate = sub.add_parser(
        "locate", help="probing + patching + recommended steering site, with figures",
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
    locate.add_argument("--n-pairs", type=int, default=8, help="clean/corrupted pairs per threat model for patching, spread over categories (default: 8)")
    locate.set_defaults(func=_cmd_locate)
    organism = sub.add_parser(
        "organism", help="fine-tune a misaligned model organism (LoRA, CPU) and measure it against its base",
        description="Fine-tune the base model (--model; default the embedded one) with LoRA on one of our recipes: "
        "dishonest (confident false answers to the honesty set's training questions), dismissive (the compassion "
        "set's dismissive replies), bad_advice (damaging plumbing and car advice: an emergent-misalignment probe) or "
        "good_advice (its control). Saves the adapter with organism.json provenance (base weights hash, data hash, "
        "settings, versions) to --out, then measures base vs organism on --measure held-out test prompts per threat "
        "model (trait with Wilson intervals and McNemar's test, preference margin, answer log-odds).",
    )
    organism.add_argument("recipe", choices=["dishonest", "dismissive", "bad_advice", "good_advice"])
    organism.add_argument("--model", default=None, help="base model: HF id, folder or .gguf (default: embedded)")
    organism.add_argument("--out", default=None, help="organism folder (default: organisms/RECIPE)")
    organism.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the recipe's)")
    organism.add_argument("--seed", type=int, default=None, help="row order and adapter initialisation (default 0)")
    organism.add_argument("--smoke", action="store_true", help="3 steps of 2 rows, for a quick check")
    organism.add_argument("--measure", type=int, default=48, help="test prompts per threat model (0: skip)")
    organism.add_argument("--max-new-tokens", type=int, default=48)
    organism.add_argument("--compare-with", default=None, metavar="FOLDER",
                          help="another organism's folder (its measure.json): compare the two paired, per threat "
                          "model (e.g. good_advice --compare-with organisms/bad_advice); writes compare.json")
    organism.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    organism.add_argument("--quiet", action="store_true", help="no progress bars")
    organism.set_defaults(func=_cmd_organism)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from lensteer.errors import LensteerError

    try:
        return int(args.func(args))
    except LensteerError as err:
        print(f"lensteer: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
