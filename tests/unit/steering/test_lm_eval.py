"""A lensteer steering handed to lm-evaluation-harness's ``steered`` model (its steer file), and a tiny local
lm-eval task run under it (where lm-eval is installed: ``pip install 'lensteer[lm-eval]'``)."""

import json

import pytest
import torch

import lensteer
from lensteer.errors import ConfigError
from lensteer.steering import lm_eval_steer_config


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_tokenizer):
    from builders import save_tiny_llama_folder

    return save_tiny_llama_folder(
        tmp_path_factory.mktemp("tiny_llama"), tiny_tokenizer, initializer_range=0.5
    )


@pytest.fixture(scope="module")
def ours(folder):
    return lensteer.load_model(str(folder))


@pytest.fixture(scope="module")
def steering(ours):
    unit = torch.randn(ours.cfg.d_model, generator=torch.Generator().manual_seed(5))
    return lensteer.Steering.from_direction(unit, layers=(1,), mode="add", scale=5.0)


def _lm_eval_add(hf, config):
    """The steered model's documented maths: add coefficient * vector to the output of the module named by
    each hookpoint among ``model.base_model.named_modules()``, at every position."""
    modules = dict(hf.base_model.named_modules())
    handles = []
    for hookpoint, info in config.items():
        delta = info["steering_coefficient"] * info["steering_vector"]

        def hook(_m, _i, out, delta=delta):
            return (out[0] + delta, *out[1:]) if isinstance(out, tuple) else out + delta

        handles.append(modules[hookpoint].register_forward_hook(hook))
    return handles


def test_the_steer_file_has_lm_evals_format_and_maths(folder, ours, steering, tmp_path, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    config = lm_eval_steer_config(steering, ours)
    assert list(config) == ["layers.1"]
    entry = config["layers.1"]
    assert entry["action"] == "add" and entry["bias"] is None and entry["steering_coefficient"] == 1.0
    torch.save(config, tmp_path / "steer.pt")  # as scripts/export_lm_eval.py writes it
    loaded = torch.load(tmp_path / "steer.pt", weights_only=True)  # no code runs when lm-eval reads it
    torch.testing.assert_close(loaded["layers.1"]["steering_vector"], steering.coefficient * steering.unit)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = torch.tensor([tiny_tokenizer("what is 2 + 2?")["input_ids"]])
    handles = _lm_eval_add(hf, loaded)
    try:
        with torch.inference_mode():
            theirs = hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    with torch.inference_mode(), lensteer.steer(ours, steering):
        mine = ours(ids)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)
    assert list(lm_eval_steer_config(steering, ours, hookpoint="h.{layer}")) == ["h.1"]
    with pytest.raises(ConfigError, match="must contain"):
        lm_eval_steer_config(steering, ours, hookpoint="layers.1")


TASK = """task: lensteer_tiny
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def _continuation_logprob(model, tokenizer, context, continuation, steering):
    """Teacher-forced log-probability of ``continuation`` after ``context`` with our own steer()."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    with torch.inference_mode(), lensteer.steer(model, steering):
        logprobs = torch.log_softmax(model(ids)[0].double(), dim=-1)
    return float(sum(logprobs[len(ctx) - 1 + k, t] for k, t in enumerate(cont)))


@pytest.mark.lm_eval  # deselected in make test (see pyproject markers); make test-lm-eval installs and runs it
def test_a_local_lm_eval_task_runs_under_the_steering(folder, ours, steering, tmp_path, tiny_tokenizer):
    import lm_eval
    from lm_eval.tasks import TaskManager

    rows = [
        {"question": "Is the sky blue?", "choices": ["yes", "no"], "answer": 0},
        {"question": "What is 2 + 2?", "choices": ["4", "5", "22"], "answer": 0},
    ]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "lensteer_tiny.yaml").write_text(TASK.format(data=tmp_path / "data.jsonl"))
    torch.save(lm_eval_steer_config(steering, ours), tmp_path / "steer.pt")
    manager = TaskManager(include_path=str(tmp_path))
    runs = {}
    for name, model, extra in (
        ("plain", "hf", ""),
        ("steered", "steered", f",steer_path={tmp_path / 'steer.pt'}"),
    ):
        runs[name] = lm_eval.simple_evaluate(
            model=model,
            model_args=f"pretrained={folder},device=cpu,dtype=float32{extra}",
            tasks=["lensteer_tiny"],
            task_manager=manager,
            log_samples=True,
            batch_size=4,
        )
    assert "acc,none" in runs["steered"]["results"]["lensteer_tiny"]
    plain = runs["plain"]["samples"]["lensteer_tiny"]
    steered = runs["steered"]["samples"]["lensteer_tiny"]
    for p, s in zip(plain, steered, strict=True):
        ll_plain = [r[0][0] for r in p["resps"]]
        ll_steered = [r[0][0] for r in s["resps"]]
        assert max(abs(a - b) for a, b in zip(ll_plain, ll_steered, strict=True)) > 1e-3  # it steers
        question = s["doc"]["question"]
        ours_ll = [
            _continuation_logprob(ours, tiny_tokenizer, question, f" {c}", steering)
            for c in s["doc"]["choices"]
        ]
        assert ll_steered == pytest.approx(ours_ll, abs=1e-3)  # lm-eval's steered model = our steer()
