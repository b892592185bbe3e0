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
# # 02 · Patching: which layers and positions carry the behaviour, causally?
#
# Clean = harmful instructions, corrupted = topic-matched harmless instructions of the same token length. The metric is the logit of "I" (the start of a refusal) minus the logit of "Sure" at the last position. Attribution patching screens every (layer, position) at the cost of two forwards and a backward; exact patching confirms it; head patching zooms in.

# %%
import os
import tempfile

SMOKE = os.environ.get("LENSTEER_SMOKE") == "1"   # CI runs a quick version
FIG_DIR = os.environ.get("LENSTEER_FIG_DIR", tempfile.mkdtemp() if SMOKE else "../figures")
N_PAIRS = 2 if SMOKE else 8
LAYERS = [8, 20] if SMOKE else None

# %%
import matplotlib.pyplot as plt

import lensteer
from lensteer import plotting

model = lensteer.load_model()
refusal = lensteer.load_dataset("refusal")
pairs = lensteer.locate.equal_length_pairs(model, refusal.prompts, refusal.paired_prompts)[:N_PAIRS]
clean = [refusal.prompts[i] for i in pairs]
corrupted = [refusal.paired_prompts[i] for i in pairs]
for a, b in zip(clean, corrupted):
    print(f"{a!r:70} | {b!r}")
metric = lensteer.locate.logit_diff_metric(lensteer.core.first_token_id(model, "I"), lensteer.core.first_token_id(model, "Sure"))

# %% [markdown]
# ## Fast pre-screen: attribution patching

# %%
approx = lensteer.attribute_residual(model, clean, corrupted, metric, layers=LAYERS)
print("top cells (layer, token, normalised effect):", approx.top_cells(5))

# %% [markdown]
# ## Exact residual-stream patching (denoising: clean into corrupted)

# %%
exact = lensteer.patch_residual(model, clean, corrupted, metric, layers=LAYERS, progress=True)
print("top cells:", exact.top_cells(5))
print(f"attribution vs exact correlation: r = {approx.correlation(exact):.2f}")
fig, ax = plotting.plot_patching(exact)
plotting.save_figure(fig, f"{FIG_DIR}/patching_resid_refusal")
fig, ax = plotting.plot_attribution_vs_exact(approx, exact)
plotting.save_figure(fig, f"{FIG_DIR}/attribution_vs_exact_refusal")

# %% [markdown]
# ## Attention heads and MLPs

# %%
heads = lensteer.locate.patch_heads(model, clean, corrupted, metric, layers=LAYERS)
fig, ax = plotting.plot_patching(heads)
plotting.save_figure(fig, f"{FIG_DIR}/patching_heads_refusal")
# the same pre-screen per head: one backward for every head of every layer
approx_heads = lensteer.locate.attribute_heads(model, clean, corrupted, metric, layers=LAYERS)
print(f"head attribution vs exact head patching: r = {approx_heads.correlation(heads):.2f}")
mlps = lensteer.locate.patch_layers(model, clean, corrupted, metric, site="mlp_out", layers=LAYERS)
print("MLP outputs, normalised effect by layer:", mlps.normalized()[:, 0].numpy().round(2))
plt.close("all")
