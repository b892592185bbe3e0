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
# # 01 · Locate: where is a misalignment contrast linearly readable?
#
# For one bundled threat model we collect residual-stream activations of its two classes on the train, val and test splits, then at every layer fit three candidate directions (difference of means, PCA of paired differences, a logistic-regression probe) and measure them on held-out prompts with 95% bootstrap CIs.

# %%
import os
import tempfile

SMOKE = os.environ.get("LENSTEER_SMOKE") == "1"   # CI runs a quick version
FIG_DIR = os.environ.get("LENSTEER_FIG_DIR", tempfile.mkdtemp() if SMOKE else "../figures")
DATASET = "refusal"          # refusal | compassion | honesty
CONTRAST = "prompt"          # "prompt": harmful vs harmless instructions; "response": aligned vs misaligned replies
N_EXAMPLES = 40 if SMOKE else None
LAYERS = [0, 6, 12, 18, 24, 29] if SMOKE else None   # None: every layer
N_BOOT = 50 if SMOKE else 500

# %%
import matplotlib.pyplot as plt

import lensteer
from lensteer import plotting

model = lensteer.load_model()
dataset = lensteer.load_dataset(DATASET)
if N_EXAMPLES:
    dataset = dataset.head(N_EXAMPLES)
print(lensteer.core.model_fingerprint(model))
print(dataset, "train/val/test:", len(dataset.train), len(dataset.val), len(dataset.test))

# %% [markdown]
# ## The probing curve
# Held-out probe accuracy and AUROC, and the AUROC of the difference-of-means and PCA projections, by layer.

# %%
report = lensteer.probe_by_layer(model, dataset, contrast=CONTRAST, layers=LAYERS, n_boot=N_BOOT, progress=True)
print(report.to_table())
fig, ax = lensteer.plotting.plot_probing(report)
plotting.save_figure(fig, f"{FIG_DIR}/probing_{DATASET}")

# %% [markdown]
# ## Do the methods agree, and does the direction persist across layers?

# %%
best = report.best_layer()
print(f"best layer by probe AUROC: {best}")
print("cosine between methods at that layer (diff_of_means, pca_of_diffs, probe):")
print(report.cosine_between_methods(best).numpy().round(2))
fig, ax = plotting.plot_method_cosines(report)
plotting.save_figure(fig, f"{FIG_DIR}/methods_{DATASET}")
fig, ax = plotting.plot_direction_cosines(report)
plotting.save_figure(fig, f"{FIG_DIR}/cosines_{DATASET}")

# %% [markdown]
# ## The probe's decision boundary
# The seed paper's StTP and StMP steer tokens whose projection falls below a threshold; the probe's boundary, in projection units along its unit normal, is that threshold.

# %%
probe = report.probe(best)
direction = report.direction("probe", best)
print(f"layer {best}: L2 = {probe.l2}, boundary s* = {probe.boundary:.2f}, metrics = {direction.metrics}")
plt.close("all")
