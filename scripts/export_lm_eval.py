"""Write a saved lensteer steering as the steer file of lm-evaluation-harness's ``steered`` model.

    python scripts/export_lm_eval.py results/steerings/refusal_SwFC_kl0.5_L9_<hash> steer.pt \
        [--model MODEL] [--hookpoint 'layers.{layer}']
    lm_eval --model steered --model_args pretrained=MODEL_HF_ID,steer_path=steer.pt --tasks mmlu

lm-eval reads its steer config with ``torch.load`` (a pickle); lensteer's package writes no pickles, so this
script does (one dict of tensors, floats and strings, loadable with ``weights_only=True``). The config is
:func:`lensteer.steering.lm_eval_steer_config` (see docs/guides/lm_eval.md).
"""

import argparse
from pathlib import Path

import torch

import lensteer
from lensteer.steering import lm_eval_steer_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steering", help="a saved steering (path without suffix)")
    parser.add_argument("out", help="the .pt file to write")
    parser.add_argument("--model", default=None, help="the model it steers (default: the embedded one)")
    parser.add_argument(
        "--hookpoint", default="layers.{layer}", help="h.{layer} for GPT-2 (default layers.{layer})"
    )
    args = parser.parse_args()
    model = lensteer.load_model(args.model)
    config = lm_eval_steer_config(
        lensteer.load_steering(args.steering, model=model), model, hookpoint=args.hookpoint
    )
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(config, tmp)
    tmp.replace(out)  # atomic: lm-eval never reads a half-written file
    print(f"wrote {out}: {', '.join(config)}")


if __name__ == "__main__":
    main()
