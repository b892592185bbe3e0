#!/usr/bin/env bash
# Run HERE (where PyPI is reachable) before a session with a lent GPU: fills .gpu/ (git-ignored, ~10 MiB)
# with what the device machine lacks. Its image has torch, transformers, accelerate, peft, einops,
# jaxtyping, matplotlib, pandas, pyarrow; not TransformerLens or datasets, and no model hub. The
# embedded GGUF (98 MB) is over the 64 MiB a call may carry, so the checks use random weights of
# SmolLM2-135M's shape: only its config and tokenizer travel.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .gpu/smollm2 .gpu/whl
folder=$(.venv/bin/python -c 'from lensteer.core.models import embedded_gguf_path, gguf_to_folder; print(gguf_to_folder(embedded_gguf_path()))')
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
    cp "$folder/$f" .gpu/smollm2/
done
# The device's Python is 3.12 (KINDS.md); pure-Python wheels except multiprocess/xxhash (on the image).
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl transformer-lens==4.3.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1
du -sh .gpu
