"""The robustness table: inducer and organism rows from one `run_study`, with the report contract."""

import json

import pytest

import lensteer
from lensteer.errors import ConfigError
from lensteer.organisms import LoraSettings, train_organism
from lensteer.study import robustness
from lensteer.study import runner as study
from lensteer.study.config import StudyConfig

CONTRACT = {
    "setting",
    "threat_model",
    "method",
    "trait",
    "trait_ci",
    "kl_heldout",
    "p_vs_baseline",
    "direction_from",
}


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory, tiny_tokenizer):
    from builders import save_tiny_llama_folder

    return str(save_tiny_llama_folder(tmp_path_factory.mktemp("base"), tiny_tokenizer, initializer_range=0.5))


def test_robustness_rows_cover_inducers_and_organisms_with_both_direction_sources(
    base_folder, tmp_path, monkeypatch
):
    organisms = tmp_path / "organisms"
    train_organism(
        "dishonest",
        organisms / "dishonest",
        base=base_folder,
        progress=False,
        lora=LoraSettings(rank=2, alpha=4, steps=2, batch_size=2, max_tokens=400),
    )
    model = lensteer.load_model(base_folder)
    cfg = StudyConfig(
        threat_models=("honesty",),
        methods=("SwFC", "StTP"),
        n_train=6,
        n_eval=3,
        n_harmless=2,
        n_borderline=0,
        n_kl=2,
        n_conversations=0,
        n_mc=0,
        n_paragraphs=0,
        max_new_tokens=3,
        candidate_layers=(0, 1),
        random_seeds=(),
        batch_size=4,
        robustness_methods=("SwFC", "StTP"),
        robustness=("prefill_mislead", "organism:dishonest", "roleplay"),
        organisms_dir=str(organisms),
    )
    result = study.run_study(model, cfg, tmp_path / "out", progress=False, log=lambda s: None)
    rows = result.report["robustness"]
    assert all(set(r) >= CONTRACT for r in rows)
    assert {r["setting"] for r in rows} == {
        "prefill_mislead",
        "organism:dishonest",
    }  # roleplay is a refusal attack
    induced = {r["method"]: r for r in rows if r["setting"] == "prefill_mislead"}
    assert set(induced) == {"baseline", "prompting", "SwFC", "StTP"}
    assert {r["direction_from"] for r in induced.values()} == {"base"} and induced["baseline"][
        "p_vs_baseline"
    ] is None
    main = result.report["threat_models"]["honesty"]["methods"]
    for m in ("SwFC", "StTP"):  # the study's own steering: the same edit, the same held-out KL
        assert induced[m]["kl_heldout"] == pytest.approx(main[m]["kl_heldout"])
        assert 0.0 <= induced[m]["p_vs_baseline"] <= 1.0 and induced[m]["n_eval"] == 3
    organism = [r for r in rows if r["setting"] == "organism:dishonest"]
    assert sorted((r["method"], r["direction_from"]) for r in organism) == [
        ("StTP", "base"),
        ("StTP", "organism"),
        ("SwFC", "base"),
        ("SwFC", "organism"),
        ("baseline", "organism"),
        ("prompting", "organism"),
    ]
    assert all(r["kl_heldout"] > 0 for r in organism if r["method"] in ("SwFC", "StTP"))
    assert all(
        r["answer_log_odds_ci"][0] <= r["answer_log_odds"] <= r["answer_log_odds_ci"][1] for r in organism
    )
    saved = json.loads((tmp_path / "out" / "robustness.json").read_text())["rows"]
    assert len(saved) == len(rows) and all(len(r["trait_flags"]) == 3 for r in saved)

    def never(*args, **kwargs):
        raise AssertionError("a finished robustness setting was recomputed")

    monkeypatch.setattr(study, "inducer_rows", never)
    monkeypatch.setattr(study, "organism_rows", never)
    again = study.run_study(model, cfg, tmp_path / "out", progress=False, log=lambda s: None)
    assert again.report["robustness"] == rows


def test_unknown_settings_and_methods_are_named():
    with pytest.raises(
        ConfigError, match=r"robustness settings \['jailbreak'\] unknown; allowed: .*organism:dishonest"
    ):
        robustness.settings_for("honesty", ["jailbreak"])
    with pytest.raises(ConfigError, match=r"robustness settings \['jailbreak'\] unknown"):
        StudyConfig(robustness=("jailbreak",))  # said at once, not after an hour of study
    with pytest.raises(ConfigError, match=r"robustness_methods \['ace'\] are not among"):
        StudyConfig(robustness=("roleplay",), robustness_methods=("ace",))
    assert robustness.settings_for("refusal", ["roleplay", "prefill_mislead", "organism:bad_advice"]) == [
        "roleplay",
        "organism:bad_advice",
    ]  # the emergent-misalignment probe is measured everywhere
