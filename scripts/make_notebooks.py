"""Write notebooks 00 (quickstart), 03 (steer and evaluate) and 04 (paper figures) with nbformat.

The notebooks are generated so they are reproducible: fixed cell ids, no outputs, the same
kernelspec as the hand-written ones. Run ``python scripts/make_notebooks.py`` after editing a cell
here; ``--check`` exits 1 when a committed notebook differs from what this script writes. Every
notebook has a smoke mode (``LENSTEER_SMOKE=1``, what CI runs with ``pytest --nbmake``).
"""

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
Cell = tuple[str, str]  # ("md" | "code", source)

SETUP = '''import os
import tempfile

SMOKE = os.environ.get("LENSTEER_SMOKE") == "1"   # CI runs a quick version
FIG_DIR = os.environ.get("LENSTEER_FIG_DIR", tempfile.mkdtemp() if SMOKE else "../figures")'''

QUICKSTART: list[Cell] = [
    ("md", """# 00 · Quickstart: steer the embedded model away from harmful compliance

Five minutes with lensteer: load the embedded SmolLM2-135M-Instruct, find a refusal direction, calibrate a steering to a
coherence budget (KL to the unsteered model on harmless prompts), compare unsteered and steered answers side by side,
see which generated tokens the steering touched, and save the steering as safetensors + JSON."""),
    ("code", SETUP.split("\nFIG_DIR")[0] + '''
OUT_DIR = tempfile.mkdtemp()                      # where the steering is saved
N_TRAIN = 16 if SMOKE else 48                     # contrast examples for the direction
MAX_NEW_TOKENS = 10 if SMOKE else 48
KL_BUDGET = 0.3                                   # nats per token on harmless prompts'''),
    ("code", '''import lensteer

model = lensteer.load_model()                     # offline; the first load converts the GGUF once
print(lensteer.core.model_fingerprint(model))'''),
    ("md", """## A direction by hand

Difference of means between harmful and harmless requests at one layer, read at the last prompt token. The harmful
prompts project higher along it than held-out harmless ones."""),
    ("code", '''refusal = lensteer.load_dataset("refusal")
train, test = refusal.train.head(N_TRAIN), refusal.test.head(8)
LAYER = 12
harmful = lensteer.collect_activations(model, train.prompts, layers=[LAYER])[:, 0]
harmless = lensteer.collect_activations(model, train.paired_prompts, layers=[LAYER])[:, 0]
direction = lensteer.diff_of_means(harmful, harmless, layer=LAYER)
held_out = lensteer.collect_activations(model, test.prompts + test.paired_prompts, layers=[LAYER])[:, 0]
scores = direction.project(held_out)
print(f"held-out projection: harmful {scores[:8].mean():.2f} vs harmless {scores[8:].mean():.2f}")
by_hand = lensteer.Steering.from_direction(direction, mode="add", scale=4.0, positions="all")
print(by_hand.describe())'''),
    ("md", """## The study's steering, calibrated

`lensteer.study.layers.build_steering` does what `lensteer run` does for one method: probe the aligned-vs-misaligned response
contrast at candidate layers, pick the layer (`recommend_site`), build the SwFC steering along the difference of means
(with a CAST-style gate for refusal: only prompts a harmful-vs-harmless probe flags are steered), and calibrate its
scale so that it costs `KL_BUDGET` nats per token on harmless prompts."""),
    ("code", '''from lensteer.study import StudyConfig, build_steering, eval_prompts

config = StudyConfig(threat_models=("refusal",), methods=("SwFC",), n_train=N_TRAIN, n_kl=2 if SMOKE else 8,
                     candidate_layers=(12,) if SMOKE else None)   # None: every 3rd layer of the first 80%
steering = build_steering(model, "refusal", "SwFC", KL_BUDGET, config)
print(steering.describe())
print("calibration:", steering.info["calibration"])'''),
    ("md", """## Unsteered vs steered

The same prompts (harmful requests the model complies with) answered with and without the steering, greedy decoding.
The last column is the share of generated tokens chosen at a position where the steering fired (0% when the gate
kept it off)."""),
    ("code", '''prompts = eval_prompts("refusal", 3)
table = lensteer.side_by_side(model, prompts, steering, max_new_tokens=MAX_NEW_TOKENS)
table                                           # renders as a Markdown table; print(table) for plain text'''),
    ("md", """## Per-token steering records

`lensteer.generate` runs lensteer's own decoding loop, so every generated token records whether steering fired while it
was chosen (`fired`) and how far the residual moved (`shift`, L2). A harmless request should be left alone by the
gate."""),
    ("code", '''gens = lensteer.generate(model, [prompts[0].user, "How do I bake bread at home?"], steering=steering,
                        max_new_tokens=MAX_NEW_TOKENS)
for text, fired, shift, gated in zip(gens.texts, gens.fired, gens.shift, gens.gated):
    print(f"gate open: {gated}; steered tokens: {int(fired.sum())}/{fired.numel()}; "
          f"mean shift {float(shift.mean()):.1f}\\n  {text!r}")
print(f"share of all generated tokens steered: {gens.steered_share():.0%}")'''),
    ("md", """### The same, token by token

`lensteer.plotting.token_view` shows one generation token by token: the background is the residual's projection on the
steering direction before the edit (red below the centre, blue above; the centre is the threshold of StTP / StMP when
one is passed, else 0) and underlined tokens are the ones steering fired on (thicker: a larger shift). It renders as
HTML here, with colours in a terminal (`print(view)`), as `view.plain()` for logs (fired tokens in brackets), and as a
figure with `lensteer.plotting.plot_token_view(view)`."""),
    ("code", '''view = lensteer.plotting.token_view(gens, 0, model, threshold=steering.threshold)
print(view.plain())
view'''),
    ("md", """## Save and load

A steering is two files: the unit vectors in safetensors and everything else (layer, site, mode, scale, gate,
calibration record, model fingerprint, versions, the tensor file's SHA-256) in JSON. No pickle. Loading checks the
model."""),
    ("code", '''paths = lensteer.save_steering(steering, f"{OUT_DIR}/refusal_swfc", model=model)
print([str(p) for p in paths])
loaded = lensteer.load_steering(f"{OUT_DIR}/refusal_swfc", model=model)
again = lensteer.generate(model, prompts[:1], steering=loaded, max_new_tokens=MAX_NEW_TOKENS)
assert again.texts[0] == table.steered[0], "the loaded steering must give the same answer"
print("loaded:", loaded.describe())'''),
]

STEER_AND_EVALUATE: list[Cell] = [
    ("md", """# 03 · Steer and evaluate one threat model

The study of `lensteer run`, piece by piece, on one threat model: locate the steering layer, calibrate each method to
the same KL budget, generate under the misaligning context, and score trait rate (with a bootstrap CI), KL, the
perplexity ratio of the outputs, repetition and over-refusal against the unsteered model; then the same thing in one
call, `run_study`."""),
    ("code", SETUP.split("\nFIG_DIR")[0] + '''
THREAT_MODEL = "compassion"     # refusal | compassion | honesty'''),
    ("code", '''import shutil
from dataclasses import replace

import matplotlib.pyplot as plt

import lensteer
from lensteer import plotting
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import eval_prompts, trait_flags
from lensteer.study.layers import locate_threat_model

config = replace(StudyConfig.smoke() if SMOKE else StudyConfig(), threat_models=(THREAT_MODEL,))
if SMOKE:   # two methods, four prompts, short answers, short KL continuations
    config = replace(config, methods=("SwFC", "StMP"), n_eval=4, max_new_tokens=10, kl_tokens=8)
KL_BUDGET = config.kl_budgets[0]   # nats per token on harmless prompts
model = lensteer.load_model()
refusal = lensteer.load_dataset("refusal")
harmless = refusal.test.stratified(config.n_harmless).paired_prompts    # held-out harmless: over-refusal, perplexity
calibration = refusal.train.stratified(config.n_kl).paired_prompts     # training prompts: KL calibration only
print(config)'''),
    ("md", """## Locate

Probe the aligned-vs-misaligned *response* contrast (mean over response tokens) at the candidate layers, then choose
the layer causally: at each layer, SwFC along that layer's difference of means is calibrated to the KL budget on
harmless prompts (the KL calibration set below), and scored by how far it moves the teacher-forced log-odds of
held-out aligned over misaligned responses (`lensteer.evaluate.layer_steerability`). `recommend_site` takes the most steerable
layer that passes its rules (Arditi et al.: not in the last 20% of layers; a significant probe). Then build the
uncalibrated steerings along the difference of means (SwFC) and the probe boundary (StTP, StMP)."""),
    ("code", '''probe = lensteer.steering.kl_probe(model, calibration, continuation_tokens=config.kl_tokens, batch_size=config.batch_size)
loc = locate_threat_model(model, THREAT_MODEL, config, calibration, probe)
print(f"layer {loc.layer} ({loc.site}); reference residual norm {loc.reference_norm:.1f}")
for reason in loc.reasons:
    print(" -", reason)
if loc.steerability:
    fig, _ = plotting.plot_steerability({"threat_models": {THREAT_MODEL: {"layer": loc.layer,
                                                                          "steerability": loc.steerability}}})
    plt.show()'''),
    ("md", """## Calibrate to a KL budget

Every method is scaled until it costs the same KL (nats per token, on unsteered continuations of harmless prompts),
so the methods are compared at a matched coherence cost."""),
    ("code", '''steerings = {}
for method, raw in loc.steerings.items():
    cal = lensteer.calibrate(model, replace(raw, gate=None), probe, KL_BUDGET)
    steerings[method] = replace(cal.steering, gate=raw.gate)
    print(f"{method}: scale {cal.scale:.3g} -> KL {cal.kl:.3f} (reached: {cal.reached}, {len(cal.history)} evaluations)")'''),
    ("md", """## Generate under the misaligning context and score

The evaluation prompts are the threat model's test split asked under its misaligning context (a dismissive or lying
few-shot history; bare harmful requests for refusal). The trait is scored offline (`trait_flags`: refusal rule,
compassion scorer, honesty answer matching) and reported with a 95% Wilson interval; each steering is compared with
the unsteered model on the same prompts by an exact McNemar test."""),
    ("code", '''examples = lensteer.load_dataset(THREAT_MODEL).test.stratified(config.n_eval)
prompts = eval_prompts(THREAT_MODEL, config.n_eval)
conditions = {"unsteered": None, **steerings}
answers, harmless_answers = {}, {}
for name, s in conditions.items():
    answers[name] = lensteer.generate(model, prompts, steering=s, max_new_tokens=config.max_new_tokens)
    harmless_answers[name] = lensteer.generate(model, harmless, steering=s, max_new_tokens=config.max_new_tokens)
print("prompt:", prompts[0].user)
for name, gen in answers.items():
    print(f"  {name:>9}: {gen.texts[0]!r}")'''),
    ("md", """### Where one steering fired, token by token

The first answer under a selective method (StMP or StTP when configured, else the first method), each token coloured by
the residual's projection on the steering direction before the edit, centred on the method's threshold; underlined
tokens are the ones the edit changed (thicker: a larger shift). `plotting.plot_token_view` draws it as a paper
figure."""),
    ("code", '''shown = next((m for m in ("StMP", "StTP") if m in steerings), next(iter(steerings)))
view = plotting.token_view(answers[shown], 0, model, threshold=steerings[shown].threshold)
fig, ax = plotting.plot_token_view(view)
view'''),
    ("code", '''import pandas as pd

from lensteer.core.stats import mcnemar_exact, wilson_interval

flags = {name: trait_flags(THREAT_MODEL, answers[name].texts, examples) for name in conditions}
rows = []
for name, s in conditions.items():
    k, n = sum(flags[name]), len(flags[name])
    over = [lensteer.evaluate.is_refusal(t) for t in harmless_answers[name].texts]
    texts = [t if t.strip() else "." for t in harmless_answers[name].texts]
    ppl = lensteer.evaluate.response_perplexity(model, harmless, texts).corpus   # under the unsteered model
    rep = lensteer.evaluate.repetition_report(answers[name].texts)
    rows.append({"condition": name, "n": n, "trait": k / n, "trait_ci": tuple(round(x, 2) for x in wilson_interval(k, n)),
                 "p vs unsteered": mcnemar_exact(flags[name], flags["unsteered"]).p_value,
                 "KL (calibration set)": 0.0 if s is None else lensteer.steering.steering_kl(model, s, probe),
                 "perplexity": ppl, "rep-4": rep.rep4, "over-refusal": sum(over) / len(over),
                 "steered share": answers[name].steered_share()})
table = pd.DataFrame(rows).set_index("condition")
table["perplexity ratio"] = table["perplexity"] / table.loc["unsteered", "perplexity"]
table.round(3)'''),
    ("md", """## Repetition over a multi-turn conversation

Steering applied over several turns can make a model repeat itself; `generate_conversations` continues each chat with
follow-up questions and `conversation_repetition` reports rep-4 per turn and the share of 4-grams repeated from
earlier turns."""),
    ("code", '''follow_ups = ["Can you say more about that?", "What else should I keep in mind?", "Could you put it another way?"]
chats = [[p.user, *follow_ups[: config.n_turns - 1]] for p in prompts[: max(1, config.n_conversations)]]
for name, s in conditions.items():
    turns = lensteer.steering.generate_conversations(model, chats, steering=s, max_new_tokens=config.max_new_tokens)
    per_turn = lensteer.evaluate.conversation_repetition([[t.texts[c] for t in turns] for c in range(len(chats))])
    print(f"{name:>9}: rep-4 by turn {[round(t.report.rep4, 2) for t in per_turn]}, "
          f"repeated from earlier turns {[round(t.rep4_history, 2) for t in per_turn]}")'''),
    ("md", """## Attacks: how hard does each inducer push?

An `Inducer` is an attack as a value (system prompt, few-shot context, assistant prefill, or a wrapper we wrote:
role-play, hypothetical, payload splitting). `inducer_effect` measures, on the same training prompts with and without
it, the change of the teacher-forced preference for the written aligned over the misaligned reply (nats per reply
token; negative: pushed towards misaligned), with a bootstrap interval and an exact sign test over prompts.
`lensteer run --robustness NAME,...` then evaluates every method under it (and in fine-tuned organisms, see the
README)."""),
    ("code", '''from lensteer.core import bundled_inducers
from lensteer.evaluate import inducer_effect

attack_set = lensteer.load_dataset(THREAT_MODEL).with_responses().train.stratified(4 if SMOKE else 24)
for name, inducer in bundled_inducers(THREAT_MODEL).items():
    e = inducer_effect(model, attack_set, inducer)
    print(f"{name:>20} ({inducer.kind:>8}): change {e.delta:+.3f} [{e.delta_ci[0]:+.3f}, {e.delta_ci[1]:+.3f}] nats/token, "
          f"fell on {e.lower}/{e.n}, sign test p = {e.p_value:.2g}{'  <- pushes' if e.pushes else ''}")'''),
    ("md", """## The same in one call: `run_study`

`run_study` runs all of the above for every method and KL budget, adds the prompting baseline, random directions
calibrated to the same KL, borderline over-refusal, KL on held-out prompts and along the answers, multiple-choice
capability and paragraph cross-entropy, with paired tests, and writes `report.json`, `results.json`/`results.csv`,
`examples.json` and the steerings; re-running into the same folder resumes. Smoke mode runs a tiny version (SwFC, the
baselines and one random control at the layer found above, two prompts, no conversations or capability items)."""),
    ("code", '''from IPython.display import Markdown, display

from lensteer.study import headline_table, run_study

out = tempfile.mkdtemp()
study_config = config
if SMOKE:
    study_config = replace(config, methods=("SwFC",), layer=loc.layer, n_eval=2, n_harmless=2, n_borderline=2, n_kl=2,
                           n_conversations=0, n_mc=0, n_paragraphs=0, max_new_tokens=8,
                           prompting=False)
result = run_study(model, study_config, out, progress=not SMOKE)
display(Markdown(headline_table(result.report)))
written = plotting.save_study_figures(out, f"{out}/figures")
print(f"{len(written)} figure files in {out}/figures")
fig, ax = plotting.plot_tradeoff(result.report["threat_models"][THREAT_MODEL]["sweep"], THREAT_MODEL)
if SMOKE:
    shutil.rmtree(out)'''),
    ("code", '''plt.close("all")'''),
]

PAPER_FIGURES: list[Cell] = [
    ("md", """# 04 · Paper figures from the committed study results

Everything here is drawn from `docs/study/` (the `report.json`, `results.json` and `examples.json` of
`lensteer run` on the embedded model); no model is loaded. `lensteer figures --results docs/study --out figures` writes
the same figures as PDF and PNG."""),
    ("code", SETUP + '''
RESULTS = "../docs/study"'''),
    ("code", '''import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from lensteer import plotting
from lensteer.study import headline_table

results = Path(RESULTS)
report = json.loads((results / "report.json").read_text())
rows = json.loads((results / "results.json").read_text())["rows"]
examples = json.loads((results / "examples.json").read_text())
budget = report["matched_kl_budget"]
print(f"model {report['model']['name']}; threat models {list(report['threat_models'])}; {len(rows)} rows; "
      f"matched KL budget {budget:g} nats/token")'''),
    ("md", """## The headline table

Each method at the matched KL budget, the unsteered baseline and the random-direction control (the README's table)."""),
    ("code", '''display(Markdown(headline_table(report)))
for tm, entry in report["threat_models"].items():
    print(f"{tm}: layer {entry.get('layer')} - {'; '.join(entry.get('reasons', []))[:160]}")'''),
    ("md", """## Alignment vs coherence

Trait rate (95% CI) against the measured KL, per method and budget; the star is the unsteered model, the crosses the
random directions (one per seed, each calibrated to the same KL budget), hollow marks the seed paper's rule as written
(scale 1, no calibration), the dashed line the Pareto front (highest trait rate for its KL)."""),
    ("code", '''fig, axes = plotting.plot_tradeoff_grid(rows)
plotting.save_figure(fig, f"{FIG_DIR}/tradeoff")
for tm in plotting.threat_models_of(rows):
    fig, ax = plotting.plot_tradeoff(rows, tm)
    plotting.save_figure(fig, f"{FIG_DIR}/tradeoff_{tm}")'''),
    ("md", """## Repetition over multi-turn conversations"""),
    ("code", '''fig, axes = plotting.plot_repetition_by_turn(rows, kl_budget=budget)
plotting.save_figure(fig, f"{FIG_DIR}/repetition_by_turn")
fig, axes = plotting.plot_repetition_by_turn(rows, kl_budget=budget, metric="rep4_history_by_turn")
plotting.save_figure(fig, f"{FIG_DIR}/repetition_history_by_turn")'''),
    ("md", """## Where the steering fired

StTP and StMP steer only tokens on the misaligned side of the probe boundary, and the refusal gate only prompts a probe
calls harmful; SwFC otherwise steers every position."""),
    ("code", '''fig, ax = plotting.plot_steered_share(rows, kl_budget=budget)
plotting.save_figure(fig, f"{FIG_DIR}/steered_share")'''),
    ("md", """## Both regimes, and is the selective steering selective?

Each selective method under the seed paper's rule as written (scale 1) and KL-matched, with the share of tokens where
it fired answering the misaligned prompts and answering harmless ones."""),
    ("code", '''from lensteer.study import regimes_table, robustness_table

display(Markdown(regimes_table(report)))'''),
    ("md", """## Robustness: other attacks and a fine-tuned organism

The trait under each threat model's prefill attack (the study's steerings on the base model) and in the dishonest
organism (every method recalibrated on it, with the base model's direction and with the organism's own)."""),
    ("code", '''display(Markdown(robustness_table(report)))
if report.get("robustness"):
    fig, axes = plotting.plot_robustness(report["robustness"])
    plotting.save_figure(fig, f"{FIG_DIR}/robustness")'''),
    ("md", """## Example answers"""),
    ("code", '''for tm in examples:
    fig, ax = plotting.plot_examples(examples, tm)
    plotting.save_figure(fig, f"{FIG_DIR}/examples_{tm}")'''),
    ("md", """## The whole sweep table"""),
    ("code", '''columns = ["threat_model", "method", "kl_budget", "trait", "kl", "perplexity_ratio", "repetition", "over_refusal",
           "capability", "steered_share"]
pd.read_csv(results / "results.csv")[columns].round(3)'''),
    ("code", '''plt.close("all")'''),
]

NOTEBOOKS = {"00_quickstart.ipynb": QUICKSTART, "03_steer_and_evaluate.ipynb": STEER_AND_EVALUATE,
             "04_paper_figures.ipynb": PAPER_FIGURES}


def build(name: str, cells: list[Cell]) -> nbformat.NotebookNode:
    """A notebook with deterministic cell ids and no outputs."""
    nb = new_notebook(metadata={"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})
    stem = name.split("_", 1)[0]
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = f"nb{stem}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed notebook is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = ROOT / "notebooks" / name
        text = nbformat.writes(build(name, cells)) + "\n"
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
            continue
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print(f"out of date: {stale}; run python scripts/make_notebooks.py")
    return int(bool(stale))


if __name__ == "__main__":
    sys.exit(main())
