"""The organisms guide's preventative-steering table is the committed measurement's
(docs/organisms/preventative.json, rendered by scripts/experiments/preventative_steering.py), and the
measurement is what the guide says it is: the same prompts, items, data and seed with and without the
steering during training."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GUIDE = ROOT / "docs" / "guides" / "organisms.md"
RESULTS = ROOT / "docs" / "organisms" / "preventative.json"


def _script():
    spec = importlib.util.spec_from_file_location(
        "preventative_steering", ROOT / "scripts" / "experiments" / "preventative_steering.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_guide_quotes_the_committed_preventative_steering_table():
    results = json.loads(RESULTS.read_text())["results"]
    assert _script().table(results) in GUIDE.read_text()


def test_the_organisms_compared_differ_only_in_the_steering_during_training():
    for res in json.loads(RESULTS.read_text())["results"]:
        without, with_ = res["models"]["without"], res["models"]["with"]
        assert without["steer_during_training"] is None and with_["steer_during_training"] is not None
        assert without["lora"] == with_["lora"] and without["data_sha256"] == with_["data_sha256"]
        for row in (without, with_):  # paired on the same prompts and items as the base
            assert len(row["flags"]) == len(res["ids"]) and len(row["mc_correct"]) == len(res["mc_ids"])
            assert row["trait"]["rate"] == sum(row["flags"]) / len(row["flags"])
