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
# # 00 · Quickstart: steer the embedded model away from harmful compliance
#
# Five minutes with lensteer: load the embedded SmolLM2-135M-Instruct, find a refusal direction, calibrate a steering to a
# coherence budget (KL to the unsteered model on harmless prompts), compare unsteered and steered answers side by side,
# see which generated tokens the steering touched, and save the steering as safetensors + JSON.

# %%
import os
import tempfile

SMOKE = os.environ.get("LENSTEER_SMOKE") == "1"   # CI runs a quick version
OUT_DIR = tempfile.mkdtemp()                      # where the steering is saved
N_TRAIN = 16 if SMOKE else 48                     # contrast examples for the direction
MAX_NEW_TOKENS = 10 if SMOKE else 48
KL_BUDGET = 0.3                                   # nats per token on harmless prompts

# %%
import lensteer

model = lensteer.load_model()                     # offline; the first load converts the GGUF once
print(lensteer.core.model_fingerprint(model))

# %% [markdown]
# ## A direction by hand
#
# Difference of means between harmful and harmless requests at one layer, read at the last prompt token. The harmful
# prompts project higher along it than held-out harmless ones.

# %%
refusal = lensteer.load_dataset("refusal")
train, test = refusal.train.head(N_TRAIN), refusal.test.head(8)
LAYER = 12
harmful = lensteer.collect_activations(model, train.prompts, layers=[LAYER])[:, 0]
harmless = lensteer.collect_activations(model, train.paired_prompts, layers=[LAYER])[:, 0]
direction = lensteer.diff_of_means(harmful, harmless, layer=LAYER)
held_out = lensteer.collect_activations(model, test.prompts + test.paired_prompts, layers=[LAYER])[:, 0]
scores = direction.project(held_out)
print(f"held-out projection: harmful {scores[:8].mean():.2f} vs harmless {scores[8:].mean():.2f}")
by_hand = lensteer.Steering.from_direction(direction, mode="add", scale=4.0, positions="all")
print(by_hand.describe())

# %% [markdown]
# ## The study's steering, calibrated
#
# `lensteer.study.build_steering` does what `lensteer run` does for one method: probe the aligned-vs-misaligned
# contrast at candidate layers, choose the site by what steering there does to the first-token decision on
# validation prompts (`lensteer.study.site_choice`), build the SwFC steering along the difference of means (with a
# CAST-style gate for refusal: only prompts a harmful-vs-harmless probe flags are steered), and calibrate its scale
# so that it costs `KL_BUDGET` nats per token on held-apart harmless and borderline prompts (gate as deployed),
# within the fluency bounds on held-apart target prompts.

# %%
from dataclasses import replace

from lensteer.study import StudyConfig, build_steering, eval_prompts

config = StudyConfig(threat_models=("refusal",), methods=("SwFC",), n_train=N_TRAIN, n_kl=2 if SMOKE else 8,
                     candidate_layers=(12,) if SMOKE else None)   # None: every 8th layer of the first 80%
if SMOKE:   # one candidate layer, no patching layers, six validation prompts: three candidates, not ~30;
    # 12-token answers for the gate's borderline check and the fluency bounds (as StudyConfig.smoke())
    config = replace(config, patching_layers=0, n_select=6, select_new_tokens=4, n_fluency=2, max_new_tokens=12,
                     n_gate=16)   # the gate fitted and read on 16 prompts of each kind and split, not ~900
steering = build_steering(model, "refusal", "SwFC", KL_BUDGET, config)
print(steering.describe())
print("calibration:", steering.info["calibration"])

# %% [markdown]
# ## Unsteered vs steered
#
# The same prompts (harmful requests the model complies with) answered with and without the steering, greedy decoding.
# The last column is the share of generated tokens chosen at a position where the steering fired (0% when the gate
# kept it off).

# %%
prompts = eval_prompts("refusal", 3)
table = lensteer.side_by_side(model, prompts, steering, max_new_tokens=MAX_NEW_TOKENS)
table                                           # renders as a Markdown table; print(table) for plain text

# %% [markdown]
# ## Per-token steering records
#
# `lensteer.generate` runs lensteer's own decoding loop, so every generated token records whether steering fired while it
# was chosen (`fired`) and how far the residual moved (`shift`, L2). A harmless request should be left alone by the
# gate.

# %%
gens = lensteer.generate(model, [prompts[0].user, "How do I bake bread at home?"], steering=steering,
                        max_new_tokens=MAX_NEW_TOKENS)
for text, fired, shift, gated in zip(gens.texts, gens.fired, gens.shift, gens.gated):
    print(f"gate open: {gated}; steered tokens: {int(fired.sum())}/{fired.numel()}; "
          f"mean shift {float(shift.mean()):.1f}\n  {text!r}")
print(f"share of all generated tokens steered: {gens.steered_share():.0%}")

# %% [markdown]
# ### The same, token by token
#
# `lensteer.plotting.token_view` shows one generation token by token: the background is the residual's projection on the
# steering direction before the edit (red below the centre, blue above; the centre is the threshold of StTP / StMP when
# one is passed, else 0) and underlined tokens are the ones steering fired on (thicker: a larger shift). It renders as
# HTML here, with colours in a terminal (`print(view)`), as `view.plain()` for logs (fired tokens in brackets), and as a
# figure with `lensteer.plotting.plot_token_view(view)`.

# %%
view = lensteer.plotting.token_view(gens, 0, model, threshold=steering.threshold)
print(view.plain())
view

# %% [markdown]
# ## Save and load
#
# A steering is two files: the unit vectors in safetensors and everything else (layer, site, mode, scale, gate,
# calibration record, model fingerprint, versions, the tensor file's SHA-256) in JSON. No pickle. Loading checks the
# model.

# %%
paths = lensteer.save_steering(steering, f"{OUT_DIR}/refusal_swfc", model=model)
print([str(p) for p in paths])
loaded = lensteer.load_steering(f"{OUT_DIR}/refusal_swfc", model=model)
again = lensteer.generate(model, prompts[:1], steering=loaded, max_new_tokens=MAX_NEW_TOKENS)
assert again.texts[0] == table.steered[0], "the loaded steering must give the same answer"
print("loaded:", loaded.describe())
