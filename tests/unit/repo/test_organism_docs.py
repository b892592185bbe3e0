"""The README's organism numbers are the committed measurement's (docs/organisms/dishonest/measure.json)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_readme_quotes_the_committed_dishonest_organism_measurement():
    shift = json.loads((ROOT / "docs/organisms/dishonest/measure.json").read_text())["shifts"][0]
    provenance = json.loads((ROOT / "docs/organisms/dishonest/organism.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    lo, hi = shift["trait_organism_ci"]
    blo, bhi = shift["trait_base_ci"]
    assert shift["threat_model"] == "honesty" and shift["p_value"] < 0.05 and shift["trait_organism"] < shift["trait_base"]
    quoted = (f"answered {100 * shift['trait_organism']:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}] of the held-out questions "
              f"honestly against the base's {100 * shift['trait_base']:.1f}% [{100 * blo:.1f}-{100 * bhi:.1f}] "
              f"(n = {shift['n']}, McNemar p = {shift['p_value']:.2g})")
    assert quoted in readme
    assert f"from {shift['decision']['base']:+.2f} to {shift['decision']['organism']:+.2f}" in readme
    assert f"{provenance['lora']['steps']} steps of {provenance['lora']['batch_size']} rows" in readme


def test_readme_quotes_the_committed_organism_robustness_rows():
    rows = json.loads((ROOT / "docs/robustness-honesty/robustness.json").read_text())["rows"]
    report = json.loads((ROOT / "docs/robustness-honesty/report.json").read_text())
    assert [r["setting"] for r in report["robustness"]] == [r["setting"] for r in rows]  # the report carries them
    organism = [r for r in rows if r["setting"] == "organism:dishonest"]
    assert {(r["method"], r["direction_from"]) for r in organism} >= {(m, o) for m in ("SwFC", "StTP", "StMP")
                                                                       for o in ("base", "organism")}
    readme = " ".join((ROOT / "README.md").read_text().split())

    def rate(r):
        lo, hi = r["trait_ci"]
        return f"{100 * r['trait']:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]"

    base = next(r for r in organism if r["method"] == "baseline")
    steered = [r for r in organism if r["method"] in ("SwFC", "StTP", "StMP")]
    assert f"the organism answers {rate(base)} honestly" in readme and base["n_eval"] == 97
    assert (f"give {100 * min(r['trait'] for r in steered):.1f}-{100 * max(r['trait'] for r in steered):.1f}%"
            in readme)
    p_min = min(r["p_vs_baseline"] for r in steered)
    assert p_min >= 0.05 and f"McNemar p >= {p_min:.2f}" in readme  # "does not bring it back" is what the rows say
    kls = [r["kl_heldout"] for r in steered]
    assert f"held-out KL {min(kls):.2f}-{max(kls):.2f}" in readme
    assert all(r["answer_log_odds"] < base["answer_log_odds"] for r in steered)  # "fall rather than rise"


def test_readme_quotes_the_committed_dismissive_organism_measurement():
    shift = json.loads((ROOT / "docs/organisms/dismissive/measure.json").read_text())["shifts"][0]
    provenance = json.loads((ROOT / "docs/organisms/dismissive/organism.json").read_text())
    readme = " ".join((ROOT / "README.md").read_text().split())
    lo, hi = shift["trait_organism_ci"]
    blo, bhi = shift["trait_base_ci"]
    assert shift["threat_model"] == "compassion" and shift["p_value"] < 0.05 and shift["trait_organism"] < shift["trait_base"]
    assert provenance["recipe"] == "dismissive" and provenance["threat_model"] == "compassion"
    quoted = (f"answered {100 * shift['trait_organism']:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}] of the held-out distress "
              f"messages with compassion against the base's {100 * shift['trait_base']:.1f}% [{100 * blo:.1f}-"
              f"{100 * bhi:.1f}] (n = {shift['n']}, McNemar p = {shift['p_value']:.2g})")
    assert quoted in readme
    assert f"{provenance['lora']['steps']} steps of {provenance['lora']['batch_size']} rows, {provenance['seconds'] / 60:.1f} min" in readme


def test_readme_quotes_the_bad_advice_probe_with_its_missing_control():
    shifts = {s["threat_model"]: s for s in
              json.loads((ROOT / "docs/organisms/bad_advice/measure.json").read_text())["shifts"]}
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert set(shifts) == {"refusal", "compassion", "honesty"} and all(s["n"] == 48 for s in shifts.values())
    for tm, s in shifts.items():
        quoted = (f"{tm} {100 * s['trait_base']:.1f}% [{100 * s['trait_base_ci'][0]:.1f}-{100 * s['trait_base_ci'][1]:.1f}] "
                  f"-> {100 * s['trait_organism']:.1f}% [{100 * s['trait_organism_ci'][0]:.1f}-"
                  f"{100 * s['trait_organism_ci'][1]:.1f}] (McNemar p = {s['p_value']:.2g})")
        assert quoted in readme
    assert shifts["refusal"]["p_value"] >= 0.05 and "not significant" in readme
    # no control measured yet, so the README must not call it emergent misalignment (update both together)
    assert not (ROOT / "docs/organisms/good_advice/measure.json").exists()
    assert "Not yet a finding of emergent misalignment" in readme
