"""What each ``lensteer`` subcommand does: load, call into the rooms, print and write (no workflow of its own)."""

import argparse
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lensteer import threats
from lensteer.core.bridge import Bridge
from lensteer.core.io import write_json

DEFAULT_BATCH = 16  # prompts per forward for probe and locate (run and evaluate take the config's)


def _layer_list(text: str) -> tuple[int, ...]:
    """``--layers 5,9,13`` as layer indices (a ConfigError naming the text otherwise)."""
    from lensteer.errors import ConfigError

    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ConfigError(
            f"--layers takes comma-separated layer indices, e.g. 5,9,13; got {text!r}"
        ) from None


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    """Set threads, load the model and say what was loaded."""
    import torch

    import lensteer

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = lensteer.load_model(args.model, device=getattr(args, "device", None))
    fp = lensteer.core.model_fingerprint(model)
    print(
        f"model: {fp.name} ({fp.n_layers} layers, d_model {fp.d_model}), loaded in {time.perf_counter() - start:.1f} s\n"
    )
    return model, fp


def _datasets(args: argparse.Namespace) -> Iterator[tuple[str, Any, Any]]:
    """The study's (name, contrast side, dataset) triples that ``--dataset`` selects (40 rows with ``--smoke``)."""
    from lensteer.study.site_search import threat_model_datasets

    return threat_model_datasets(args.dataset, smoke=args.smoke)


def cmd_probe(args: argparse.Namespace) -> int:
    import lensteer
    from lensteer.plotting.locate_figures import save_probing_figures

    start = time.perf_counter()
    model, fp = _load(args)
    reports = {}
    out = Path(args.out)
    for name, contrast, dataset in _datasets(args):
        report = lensteer.probe_by_layer(
            model,
            dataset,
            contrast=contrast,
            batch_size=args.batch_size or DEFAULT_BATCH,
            progress=not args.quiet,
        )
        print(report.to_table(), "\n", flush=True)
        reports[name] = report.to_dict()
        save_probing_figures(report, out / "figures")
    write_json(out / "probing.json", {"model": fp.to_dict(), "reports": reports})
    print(f"wrote {out / 'probing.json'} and {out / 'figures'} in {time.perf_counter() - start:.0f} s")
    return 0


def _study_config(args: argparse.Namespace) -> Any:
    from lensteer.errors import ConfigError
    from lensteer.study.config import StudyConfig

    chosen = [
        flag
        for flag, given in (
            ("--config", args.config),
            ("--profile", getattr(args, "profile", None)),
            ("--smoke", args.smoke),
        )
        if given
    ]
    if len(chosen) > 1:
        raise ConfigError(
            f"{' and '.join(chosen)} both choose the study's sizes; give one of --config, --profile "
            "or --smoke (--smoke is --profile smoke)"
        )
    if args.config:
        config = StudyConfig.from_toml(args.config)
    else:
        config = StudyConfig.profile(getattr(args, "profile", None) or ("smoke" if args.smoke else "demo"))
    overrides: dict[str, Any] = {}
    if args.dataset:
        overrides["threat_models"] = tuple(args.dataset)
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if getattr(args, "kl", None):
        overrides["kl_budgets"] = args.kl  # parsed and checked by the parser
    if getattr(args, "method", None):
        overrides["methods"] = tuple(args.method)
    if getattr(args, "layers", None):
        overrides["sweep_layers"] = _layer_list(args.layers)
    if getattr(args, "robustness", None):
        overrides["robustness"] = tuple(x.strip() for x in args.robustness.split(",") if x.strip())
        if getattr(args, "method", None):
            overrides["robustness_methods"] = tuple(m for m in args.method if m in ("SwFC", "StTP", "StMP"))
    if overrides:
        config = StudyConfig.from_dict({**config.to_dict(), **overrides})
    return config


def _eval_sets(args: argparse.Namespace, studied: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The ``--eval-set`` files, read and checked before any model loads (for ``run``: each must measure a
    threat model the study runs)."""
    from lensteer.errors import ConfigError
    from lensteer.evaluate.public_sets import load_eval_sets

    sets = load_eval_sets(args.eval_set or [])
    for key, public in sets.items():
        name = threats.for_benchmark(public.format).name
        if studied is not None and name not in studied:
            raise ConfigError(
                f"--eval-set {key} measures threat model {name!r}, which this run does not study "
                f"(it runs {list(studied)}); add --dataset {name} or leave the set out"
            )
    return sets


def _write_eval_sets(out: Path, model: Bridge, sets: dict[str, Any], conditions_of: Any, config: Any) -> None:
    from lensteer.study.public_eval import evaluate_public_sets, public_table

    reports = evaluate_public_sets(model, sets, conditions_of, config)
    write_json(out / "eval_sets.json", {"model": model_summary(model), "eval_sets": reports})
    for report in reports.values():
        print("\n" + public_table(report))
    print(f"\nwrote {out / 'eval_sets.json'}")


def model_summary(model: Bridge) -> dict[str, Any]:
    import lensteer

    return dict(lensteer.core.model_fingerprint(model).to_dict())


def cmd_run(args: argparse.Namespace) -> int:
    from lensteer.core.outdir import claim_folder
    from lensteer.study.identity import STUDY_COMPANIONS, STUDY_MARKERS

    config = _study_config(args)
    if args.plan:  # what would run, and an estimate per stage; writes nothing
        return _plan(args, config)
    sets = _eval_sets(args, config.threat_models)
    with claim_folder(args.out, STUDY_MARKERS, "study", STUDY_COMPANIONS):  # refused before the model loads
        code = _run(args, config)
        if sets:  # the study's saved steerings, in the locked folder
            from lensteer.study.public_eval import study_conditions

            model, _ = _load(args)
            _write_eval_sets(
                Path(args.out), model, sets, lambda tm: study_conditions(model, args.out, tm, config), config
            )
    return code


def _plan(args: argparse.Namespace, config: Any) -> int:
    from lensteer.study.plan import format_plan, probe_rates, study_plan

    model = _load(args)[0]
    plans, stages = study_plan(model, config)
    print(format_plan(plans, stages, probe_rates(model, config)))
    return 0


def _run(args: argparse.Namespace, config: Any) -> int:
    from lensteer.errors import ConfigError
    from lensteer.study.report import headline_table

    start = time.perf_counter()
    out = Path(args.out)
    if args.executor == "ray":  # the workers load the model themselves
        from lensteer.study.distributed import run_study_distributed

        result = run_study_distributed(
            args.model,
            config,
            out,
            address=args.address,
            workers=args.workers,
            threads=args.threads or None,
            progress=not args.quiet,
            force=args.force,
            block_size=args.block_size,
        )
    elif args.address is not None or args.workers is not None or args.block_size is not None:
        raise ConfigError(
            "--address, --workers and --block-size go with --executor ray; the serial executor runs in "
            "this process"
        )
    else:
        from lensteer.study.runner import run_study

        result = run_study(_load(args)[0], config, out, progress=not args.quiet, force=args.force)
    if not args.no_figures:
        from lensteer.plotting import save_study_figures

        save_study_figures(out, out / "figures")
    print("\n" + headline_table(result.report))
    print(
        f"\nwrote {out / 'report.json'}, {out / 'results.csv'}, {out / 'steerings'}"
        f"{'' if args.no_figures else ', ' + str(out / 'figures')} in {time.perf_counter() - start:.0f} s"
    )
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    from lensteer.plotting import save_study_figures
    from lensteer.study.folder import RunFolder

    results = Path(args.results)
    if not RunFolder(results).report_path.exists():
        from lensteer.errors import DataError

        raise DataError(f"{results / 'report.json'} does not exist; run `lensteer run --out {results}` first")
    paths = save_study_figures(results, Path(args.out))
    print("\n".join(str(p) for p in paths))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from lensteer.study import headline_table, rebuild_report
    from lensteer.study.folder import RunFolder

    report = rebuild_report(Path(args.results))
    print(headline_table(report))
    print(f"\nwrote {RunFolder(Path(args.results)).report_path}")
    return 0


def cmd_steer(args: argparse.Namespace) -> int:
    import lensteer
    from lensteer.study.coherence import build_steering
    from lensteer.study.config import StudyConfig
    from lensteer.study.evaluation import eval_prompts

    model, _ = _load(args)
    if args.steering:
        steering = lensteer.load_steering(args.steering, model=model)
        name = args.dataset[0] if args.dataset else threats.DEFAULT
    else:
        name = args.dataset[0] if args.dataset else threats.DEFAULT
        config = StudyConfig(
            threat_models=(name,),
            methods=(args.method_one,),
            kl_budgets=(args.kl_one,),
            layer=args.layer,
            n_kl=6,
            batch_size=args.batch_size or StudyConfig().batch_size,
        )
        steering = build_steering(model, name, args.method_one, args.kl_one, config, progress=not args.quiet)
    prompts = list(args.prompt) if args.prompt else eval_prompts(name, args.n)
    table = lensteer.side_by_side(
        model,
        prompts,
        steering,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size or DEFAULT_BATCH,
    )
    print(table)
    if args.save:
        lensteer.save_steering(steering, args.save, model=model)
        print(f"saved the steering to {args.save}.safetensors / .json")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import lensteer
    from lensteer.study.evaluation import evaluate_steering
    from lensteer.study.report import headline_table

    start = time.perf_counter()
    config = _study_config(args)
    sets = _eval_sets(args)
    model, _ = _load(args)
    steering = lensteer.load_steering(args.steering, model=model)
    name = args.dataset[0] if args.dataset else threats.DEFAULT
    label = Path(args.steering).name
    if sets:
        from lensteer.study.public_eval import steering_conditions

        _write_eval_sets(
            Path(args.out),
            model,
            sets,
            lambda tm: steering_conditions(model, steering, tm, config, name=label),
            config,
        )
        print(f"in {time.perf_counter() - start:.0f} s")
        return 0
    report = evaluate_steering(model, steering, name, config, name=label)
    out = Path(args.out)
    report.to_json(out / "evaluate.json")
    print("\n" + headline_table(report))
    print(f"\nwrote {out / 'evaluate.json'} in {time.perf_counter() - start:.0f} s")
    return 0


def cmd_organism(args: argparse.Namespace) -> int:
    from lensteer.core.outdir import claim_folder
    from lensteer.organisms import get_recipe
    from lensteer.organisms.train import ORGANISM_FILE

    recipe = get_recipe(args.recipe)
    out = args.out or f"organisms/{recipe.name}"
    steer = _training_steering(args)  # a bad steering file is refused before hours of training
    along = _shift_directions(args, [recipe.threat_model] if recipe.threat_model else threats.BUNDLED)
    with claim_folder(out, (ORGANISM_FILE,), "organism"):  # so is a folder that is not an organism's
        return _organism(args, Path(out), steer, along)


def _training_steering(args: argparse.Namespace) -> Any:
    """``--steer-during-training`` as a :class:`~lensteer.organisms.TrainingSteering` (``None`` without it)."""
    from lensteer.errors import ConfigError
    from lensteer.organisms import TrainingSteering
    from lensteer.steering.files import load_steering

    if args.steer_during_training is None:
        if args.steer_coefficient is not None:
            raise ConfigError("--steer-coefficient needs --steer-during-training STEERING")
        return None
    steering = load_steering(args.steer_during_training)
    return TrainingSteering.from_steering(
        steering, args.steer_coefficient, source=str(args.steer_during_training)
    )


def _shift_directions(args: argparse.Namespace, measured: Sequence[str]) -> dict[str | None, Any]:
    """The directions the fine-tune's activation shift is read along, by threat model (``None``: every
    measured threat model without one of its own): ``--shift-along [THREAT_MODEL=]STEERING`` (repeatable),
    else the steering steered during training (its first layer and its site); empty without either.

    Raises:
        ConfigError: A threat model named twice, or one the organism is not measured on.
    """
    from lensteer.errors import ConfigError
    from lensteer.locate import Direction
    from lensteer.steering.files import load_steering

    given = args.shift_along or ([args.steer_during_training] if args.steer_during_training else [])
    out: dict[str | None, Any] = {}
    for spec in given:
        name, _, rest = spec.partition("=")
        key, path = (name, rest) if rest and name in threats.names() else (None, spec)  # else a path
        if key is not None and key not in measured:
            raise ConfigError(
                f"--shift-along {spec!r}: this organism is measured on {list(measured)}, not {key!r}"
            )
        if key in out:
            raise ConfigError(
                f"--shift-along names {'every threat model' if key is None else repr(key)} twice"
            )
        steering = load_steering(path)
        out[key] = Direction(unit=steering.unit, layer=steering.layers[0], site=steering.site, source=path)
    return out


def _activation_shifts(
    args: argparse.Namespace, base: Any, organism: Any, directions: dict[str | None, Any], measured: Any
) -> None:
    """Add each threat model's activation shift along its direction in ``directions`` (its own, else the
    ``None`` one; on the prompts its trait was measured on) to ``measured`` and print it beside the trait
    change."""
    from lensteer.errors import DataError
    from lensteer.locate import organism_shift

    for row in measured["shifts"]:
        along = directions.get(row["threat_model"], directions.get(None))
        if along is None:
            continue
        data = threats.get(row["threat_model"]).load().with_responses().test.stratified(args.measure)
        if [ex.id for ex in data.examples] != row["ids"]:  # the same selection as measure_organism's
            raise DataError(f"{row['threat_model']}: the shift's prompts are not the measured ones")
        shift = organism_shift(base, organism, along, data.chat_prompts())
        row["activation_shift"] = {**shift.to_dict(), "steering": along.source}
        lo, hi = shift.ci
        print(
            f"[{row['threat_model']}] activation shift along {along.source} (layer {along.layer}): "
            f"{shift.mean:+.3g} [{lo:+.3g}, {hi:+.3g}] (organism minus base; positive: toward aligned)"
        )


def _organism(args: argparse.Namespace, out: Path, steer: Any, along: Any) -> int:
    from dataclasses import replace

    import torch

    import lensteer
    from lensteer.organisms import get_recipe, load_organism, train_organism
    from lensteer.study.organisms import compare_organisms, measure_organism, read_measurement

    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = get_recipe(args.recipe)
    lora = replace(
        recipe.lora, **{k: v for k, v in (("steps", args.steps), ("seed", args.seed)) if v is not None}
    )
    if args.smoke:
        lora = replace(lora, steps=3, batch_size=2)
    other = (
        read_measurement(args.compare_with) if args.compare_with else None
    )  # checked before hours of training
    print(
        f"organism {recipe.name}: {recipe.description}; LoRA rank {lora.rank}, {lora.steps} steps of "
        f"{lora.batch_size} rows, lr {lora.learning_rate:g}"
    )
    if steer is not None:
        print(
            f"steering during training (off at evaluation): {steer.coefficient:+.4g} x the unit of "
            f"{steer.source} at layers {list(steer.layers)} {steer.site}"
        )
    done = train_organism(
        recipe, out, base=args.model, lora=lora, progress=not args.quiet, log=print, steer=steer
    )
    print(f"saved {out} ({done.seconds:.0f} s, final loss {done.final_loss:.3f})")
    if args.measure <= 0:
        return 0
    base = lensteer.load_model(args.model)
    organism = load_organism(out)
    threat_models = [recipe.threat_model] if recipe.threat_model else None
    shifts = measure_organism(
        base, organism, threat_models, n=args.measure, max_new_tokens=args.max_new_tokens
    )
    for s in shifts:
        print(s.summary())
    measured = {"organism": str(out), "shifts": [s.to_dict() for s in shifts]}
    if along:
        _activation_shifts(args, base, organism, along, measured)
    write_json(out / "measure.json", measured)
    print(f"wrote {out / 'measure.json'}")
    if other is not None:
        rows = compare_organisms(measured, other, (recipe.name, Path(args.compare_with).name))
        print("\n".join(c.summary() for c in rows))
        write_json(out / "compare.json", {"names": list(rows[0].names), "rows": [c.to_dict() for c in rows]})
        print(f"wrote {out / 'compare.json'}")
    return 0


def cmd_locate(args: argparse.Namespace) -> int:
    from lensteer.plotting.locate_figures import save_site_search_figures
    from lensteer.study.site_search import search_site

    start = time.perf_counter()
    model, fp = _load(args)
    out, fig_dir = Path(args.out), Path(args.figures or Path(args.out) / "figures")
    summary: dict[str, object] = {"model": fp.to_dict()}
    layers = _layer_list(args.layers) if args.layers else None
    for name, contrast, dataset in _datasets(args):
        found = search_site(
            model,
            name,
            dataset,
            contrast,
            layers=layers,
            n_pairs=args.n_pairs,
            batch_size=args.batch_size or DEFAULT_BATCH,
            progress=not args.quiet,
        )
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
