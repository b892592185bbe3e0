# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Steer and evaluate one threat model
#
# The study of `lensteer run`, piece by piece, on one threat model: locate the steering layer, calibrate each method to
# the same KL budget, generate under the misaligning context, and score trait rate (with a bootstrap CI), KL, the
# perplexity ratio of the outputs, repetition and over-refusal against the unsteered model; then the same thing in one
# call, `run_study`.

# %%
import os
import tempfile

SMOKE = os.environ.get("LENSTEER_SMOKE") == "1"   # CI runs a quick version
THREAT_MODEL = "compassion"     # refusal | compassion | honesty

# %%
import shutil
from dataclasses import replace

import matplotlib.pyplot as plt

import lensteer
from lensteer import plotting
from lensteer.study.config import StudyConfig
from lensteer.study.evaluation import eval_prompts, trait_flags
from lensteer.study.coherence import calibrate_coherent, calibration_prompts as calibration_prompts_of, coherence_for
from lensteer.study.layers import locate_threat_model
from lensteer.plotting.selection_figure import plot_selection

config = replace(StudyConfig.smoke() if SMOKE else StudyConfig(), threat_models=(THREAT_MODEL,))
if SMOKE:   # two methods, eight training and four test prompts, short answers and KL continuations, one candidate
    # layer (no patching's), the KL budget alone (no fluency bound: its search is tested in tests/unit/study)
    config = replace(config, methods=("SwFC", "StMP"), n_eval=4, max_new_tokens=10, kl_tokens=8,
                     candidate_layers=(17,), patching_layers=0, select_new_tokens=4, n_fluency=0,
                     n_train=8, n_select=4)
KL_BUDGET = config.kl_budgets[0]   # nats per token on harmless prompts
model = lensteer.load_model()
refusal = lensteer.load_dataset("refusal")
harmless = refusal.test.stratified(config.n_harmless).paired_prompts    # held-out harmless: over-refusal, perplexity
calibration_prompts = calibration_prompts_of(config)   # held-apart harmless + borderline: KL calibration only
print(config)

# %% [markdown]
# ## Locate
#
# Probe the aligned-vs-misaligned contrast at the candidate layers, then choose the site by behaviour
# (`lensteer.study.site_choice`): candidate directions over layers (a stride plus the top layers of attribution
# patching) x positions x sources (prompt contrast, response mean, probe normal), each calibrated to the KL budget
# and scored on validation prompts by how far it moves the first-token decision (aligned vs misaligned opening
# tokens); the winner has the best lower bootstrap bound, passes Arditi et al.'s filters and beats a same-KL random
# direction. Then build the uncalibrated steerings there (SwFC along the difference of means, StTP / StMP along
# the probe boundary).

# %%
probe = lensteer.steering.kl_probe(model, calibration_prompts, continuation_tokens=config.kl_tokens,
                                   batch_size=config.batch_size)
loc = locate_threat_model(model, THREAT_MODEL, config, calibration_prompts, probe)
print(f"layer {loc.layer} ({loc.site}); reference residual norm {loc.reference_norm:.1f}")
for reason in loc.reasons:
    print(" -", reason)
scored = [c for c in (loc.selection or {}).get("candidates", []) if c["decision_shift"] is not None]
if scored:   # every scored candidate's decision shift by layer, position and source; the chosen one starred
    fig, _ = plot_selection(loc.selection)
    plt.show()
elif loc.selection:
    print("no candidate passed the filters, so none was scored (the reasons above)")

# %% [markdown]
# ## Calibrate to a KL budget
#
# Every method is scaled until it costs the same KL (nats per token, on unsteered continuations of held-apart
# harmless and borderline prompts, with its gate as deployed: coherence is priced where change is unwanted, never
# on the prompts whose answers should change), then held to the fluency bounds on held-apart target prompts.

# %%
steerings = {}
for method, raw in loc.steerings.items():
    steerings[method] = calibrate_coherent(model, raw, coherence_for(model, THREAT_MODEL, config, probe), KL_BUDGET)
    info = steerings[method].info["calibration"]
    print(f"{method}: scale {steerings[method].scale:.3g} -> KL {info['kl']:.3f} (set by: {info.get('binding', 'kl')})")

# %% [markdown]
# ## Generate under the misaligning context and score
#
# The evaluation prompts are the threat model's test split asked under its misaligning context (a dismissive or lying
# few-shot history; bare harmful requests for refusal). The trait is scored offline (`trait_flags`: refusal rule,
# compassion scorer, honesty answer matching) and reported with a 95% Wilson interval; each steering is compared with
# the unsteered model on the same prompts by an exact McNemar test.

# %%
examples = lensteer.load_dataset(THREAT_MODEL).test.stratified(config.n_eval)
prompts = eval_prompts(THREAT_MODEL, config.n_eval)
conditions = {"unsteered": None, **steerings}
answers, harmless_answers = {}, {}
for name, s in conditions.items():
    answers[name] = lensteer.generate(model, prompts, steering=s, max_new_tokens=config.max_new_tokens)
    harmless_answers[name] = lensteer.generate(model, harmless, steering=s, max_new_tokens=config.max_new_tokens)
print("prompt:", prompts[0].user)
for name, gen in answers.items():
    print(f"  {name:>9}: {gen.texts[0]!r}")

# %% [markdown]
# ### Where one steering fired, token by token
#
# The first answer under a selective method (StMP or StTP when configured, else the first method), each token coloured by
# the residual's projection on the steering direction before the edit, centred on the method's threshold; underlined
# tokens are the ones the edit changed (thicker: a larger shift). `plotting.plot_token_view` draws it as a paper
# figure.

# %%
shown = next((m for m in ("StMP", "StTP") if m in steerings), next(iter(steerings)))
view = plotting.token_view(answers[shown], 0, model, threshold=steerings[shown].threshold)
fig, ax = plotting.plot_token_view(view)
view

# %%
import pandas as pd

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
table.round(3)

# %% [markdown]
# ## Repetition over a multi-turn conversation
#
# Steering applied over several turns can make a model repeat itself; `generate_conversations` continues each chat with
# follow-up questions and `conversation_repetition` reports rep-4 per turn and the share of 4-grams repeated from
# earlier turns.

# %%
follow_ups = ["Can you say more about that?", "What else should I keep in mind?", "Could you put it another way?"]
chats = [[p.user, *follow_ups[: config.n_turns - 1]] for p in prompts[: max(1, config.n_conversations)]]
for name, s in conditions.items():
    turns = lensteer.steering.generate_conversations(model, chats, steering=s, max_new_tokens=config.max_new_tokens)
    per_turn = lensteer.evaluate.conversation_repetition([[t.texts[c] for t in turns] for c in range(len(chats))])
    print(f"{name:>9}: rep-4 by turn {[round(t.report.rep4, 2) for t in per_turn]}, "
          f"repeated from earlier turns {[round(t.rep4_history, 2) for t in per_turn]}")

# %% [markdown]
# ## Attacks: how hard does each inducer push?
#
# An `Inducer` is an attack as a value (system prompt, few-shot context, assistant prefill, or a wrapper we wrote:
# role-play, hypothetical, payload splitting). `inducer_effect` measures, on the same training prompts with and without
# it, the change of the teacher-forced preference for the written aligned over the misaligned reply (nats per reply
# token; negative: pushed towards misaligned), with a bootstrap interval and an exact sign test over prompts.
# `lensteer run --robustness NAME,...` then evaluates every method under it (and in fine-tuned organisms, see the
# README).

# %%
from lensteer.core import bundled_inducers
from lensteer.evaluate import inducer_effect

attack_set = lensteer.load_dataset(THREAT_MODEL).with_responses().train.stratified(2 if SMOKE else 24)
for name, inducer in bundled_inducers(THREAT_MODEL).items():
    e = inducer_effect(model, attack_set, inducer)
    print(f"{name:>20} ({inducer.kind:>8}): change {e.delta:+.3f} [{e.delta_ci[0]:+.3f}, {e.delta_ci[1]:+.3f}] nats/token, "
          f"fell on {e.lower}/{e.n}, sign test p = {e.p_value:.2g}{'  <- pushes' if e.pushes else ''}")

# %% [markdown]
# ## The same in one call: `run_study`
#
# `run_study` runs all of the above for every method and KL budget, adds the prompting baseline, random directions
# calibrated to the same KL, borderline over-refusal, KL on held-out prompts and along the answers, multiple-choice
# capability and paragraph cross-entropy, with paired tests, and writes `report.json`, `results.json`/`results.csv`,
# `examples.json` and the steerings; re-running into the same folder resumes. Smoke mode runs a tiny version (SwFC, the
# baselines and one random control at the layer found above, two prompts, no conversations, capability items or
# fluency bounds).

# %%
from IPython.display import Markdown, display

from lensteer.study import headline_table, run_study

out = tempfile.mkdtemp()
study_config = config
if SMOKE:
    study_config = replace(config, methods=("SwFC",), layer=loc.layer, n_eval=2, n_harmless=2, n_borderline=2, n_kl=2,
                           n_conversations=0, n_mc=0, n_paragraphs=0, max_new_tokens=8, n_fluency=0,
                           prompting=False)
result = run_study(model, study_config, out, progress=not SMOKE)
display(Markdown(headline_table(result.report)))
written = plotting.save_study_figures(out, f"{out}/figures")
print(f"{len(written)} figure files in {out}/figures")
fig, ax = plotting.plot_tradeoff(result.report["threat_models"][THREAT_MODEL]["sweep"], THREAT_MODEL)
if SMOKE:
    shutil.rmtree(out)

# %%
plt.close("all")
