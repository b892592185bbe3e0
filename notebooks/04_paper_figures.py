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
# # 04 · Paper figures from the committed study results
#
# Everything here is drawn from `docs/study/` (the `report.json`, `results.json` and `examples.json` of
# `lensteer run` on the embedded model); no model is loaded. `lensteer figures --results docs/study --out figures` writes
# the same figures as PDF and PNG.

# %%
import os
import tempfile

SMOKE = os.environ.get("LENSTEER_SMOKE") == "1"   # CI runs a quick version
FIG_DIR = os.environ.get("LENSTEER_FIG_DIR", tempfile.mkdtemp() if SMOKE else "../figures")
RESULTS = "../docs/study"

# %%
import json
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
      f"matched KL budget {budget:g} nats/token")

# %% [markdown]
# ## The headline table
#
# Each method at the matched KL budget, the unsteered baseline and the random-direction control (the README's table).

# %%
display(Markdown(headline_table(report)))
for tm, entry in report["threat_models"].items():
    print(f"{tm}: layer {entry.get('layer')} - {'; '.join(entry.get('reasons', []))[:160]}")

# %% [markdown]
# ## Alignment vs coherence
#
# Trait rate (95% CI) against the measured KL, per method and budget; the star is the unsteered model, the crosses the
# random directions (one per seed, each calibrated to the same KL budget), hollow marks the seed paper's rule as written
# (scale 1, no calibration), the dashed line the Pareto front (highest trait rate for its KL).

# %%
fig, axes = plotting.plot_tradeoff_grid(rows)
plotting.save_figure(fig, f"{FIG_DIR}/tradeoff")
for tm in plotting.threat_models_of(rows):
    fig, ax = plotting.plot_tradeoff(rows, tm)
    plotting.save_figure(fig, f"{FIG_DIR}/tradeoff_{tm}")

# %% [markdown]
# ## Repetition over multi-turn conversations

# %%
fig, axes = plotting.plot_repetition_by_turn(rows, kl_budget=budget)
plotting.save_figure(fig, f"{FIG_DIR}/repetition_by_turn")
fig, axes = plotting.plot_repetition_by_turn(rows, kl_budget=budget, metric="rep4_history_by_turn")
plotting.save_figure(fig, f"{FIG_DIR}/repetition_history_by_turn")

# %% [markdown]
# ## Where the steering fired
#
# StTP and StMP steer only tokens on the misaligned side of the probe boundary, and the refusal gate only prompts a probe
# calls harmful; SwFC otherwise steers every position.

# %%
fig, ax = plotting.plot_steered_share(rows, kl_budget=budget)
plotting.save_figure(fig, f"{FIG_DIR}/steered_share")

# %% [markdown]
# ## Both regimes, and is the selective steering selective?
#
# Each selective method under the seed paper's rule as written (scale 1) and KL-matched, with the share of tokens where
# it fired answering the misaligned prompts and answering harmless ones.

# %%
from lensteer.study import regimes_table, robustness_table

display(Markdown(regimes_table(report)))

# %% [markdown]
# ## Robustness: other attacks and a fine-tuned organism
#
# The trait under each threat model's prefill attack (the study's steerings on the base model) and in the dishonest
# organism (every method recalibrated on it, with the base model's direction and with the organism's own).

# %%
display(Markdown(robustness_table(report)))
if report.get("robustness"):
    fig, axes = plotting.plot_robustness(report["robustness"])
    plotting.save_figure(fig, f"{FIG_DIR}/robustness")

# %% [markdown]
# ## Example answers

# %%
for tm in examples:
    fig, ax = plotting.plot_examples(examples, tm)
    plotting.save_figure(fig, f"{FIG_DIR}/examples_{tm}")

# %% [markdown]
# ## The whole sweep table

# %%
columns = ["threat_model", "method", "kl_budget", "trait", "kl", "perplexity_ratio", "repetition", "over_refusal",
           "capability", "steered_share"]
pd.read_csv(results / "results.csv")[columns].round(3)

# %%
plt.close("all")
