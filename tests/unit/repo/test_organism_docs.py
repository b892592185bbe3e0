"""The organisms guide's numbers are the committed measurements' (docs/organisms/*/measure.json, compare.json and
docs/robustness-honesty/robustness.json)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GUIDE = ROOT / "docs" / "guides" / "organisms.md"


def test_organisms_guide_quotes_the_committed_dishonest_organism_measurement():
    shift = json.loads((ROOT / "docs/organisms/dishonest/measure.json").read_text())["shifts"][0]
    provenance = json.loads((ROOT / "docs/organisms/dishonest/organism.json").read_text())
    guide = " ".join(GUIDE.read_text().split())
    lo, hi = shift["trait_organism_ci"]
    blo, bhi = shift["trait_base_ci"]
    assert (
        shift["threat_model"] == "honesty"
        and shift["p_value"] < 0.05
        and shift["trait_organism"] < shift["trait_base"]
    )
    quoted = (
        f"answered {100 * shift['trait_organism']:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}] of the held-out questions "
        f"honestly against the base's {100 * shift['trait_base']:.1f}% [{100 * blo:.1f}-{100 * bhi:.1f}] "
        f"(n = {shift['n']}, McNemar p = {shift['p_value']:.2g})"
    )
    assert quoted in guide
    assert f"from {shift['decision']['base']:+.2f} to {shift['decision']['organism']:+.2f}" in guide
    assert f"{provenance['lora']['steps']} steps of {provenance['lora']['batch_size']} rows" in guide


def test_organisms_guide_quotes_the_committed_organism_robustness_rows():
    rows = json.loads((ROOT / "docs/robustness-honesty/robustness.json").read_text())["rows"]
    report = json.loads((ROOT / "docs/robustness-honesty/report.json").read_text())
    assert [r["setting"] for r in report["robustness"]] == [
        r["setting"] for r in rows
    ]  # the report carries them
    organism = [r for r in rows if r["setting"] == "organism:dishonest"]
    assert {(r["method"], r["direction_from"]) for r in organism} >= {
        (m, o) for m in ("SwFC", "StTP", "StMP") for o in ("base", "organism")
    }
    guide = " ".join(GUIDE.read_text().split())

    def rate(r):
        lo, hi = r["trait_ci"]
        return f"{100 * r['trait']:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]"

    base = next(r for r in organism if r["method"] == "baseline")
    steered = [r for r in organism if r["method"] in ("SwFC", "StTP", "StMP")]
    assert f"the organism answers {rate(base)} honestly" in guide and base["n_eval"] == 97
    assert (
        f"give {100 * min(r['trait'] for r in steered):.1f}-{100 * max(r['trait'] for r in steered):.1f}%"
        in guide
    )
    p_min = min(r["p_vs_baseline"] for r in steered)
    assert (
        p_min >= 0.05 and f"McNemar p >= {p_min:.2f}" in guide
    )  # "does not bring it back" is what the rows say
    kls = [r["kl_heldout"] for r in steered]
    assert f"held-out KL {min(kls):.2f}-{max(kls):.2f}" in guide
    assert all(r["answer_log_odds"] < base["answer_log_odds"] for r in steered)  # "fall rather than rise"


def test_organisms_guide_quotes_the_committed_dismissive_organism_measurement():
    shift = json.loads((ROOT / "docs/organisms/dismissive/measure.json").read_text())["shifts"][0]
    provenance = json.loads((ROOT / "docs/organisms/dismissive/organism.json").read_text())
    guide = " ".join(GUIDE.read_text().split())
    lo, hi = shift["trait_organism_ci"]
    blo, bhi = shift["trait_base_ci"]
    assert (
        shift["threat_model"] == "compassion"
        and shift["p_value"] < 0.05
        and shift["trait_organism"] < shift["trait_base"]
    )
    assert provenance["recipe"] == "dismissive" and provenance["threat_model"] == "compassion"
    quoted = (
        f"answered {100 * shift['trait_organism']:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}] of the held-out distress "
        f"messages with compassion against the base's {100 * shift['trait_base']:.1f}% [{100 * blo:.1f}-"
        f"{100 * bhi:.1f}] (n = {shift['n']}, McNemar p = {shift['p_value']:.2g})"
    )
    assert quoted in guide
    assert (
        f"{provenance['lora']['steps']} steps of {provenance['lora']['batch_size']} rows, {provenance['seconds'] / 60:.1f} min"
        in guide
    )


def _pct(rate, ci):
    return f"{100 * rate:.1f}% [{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]"


def test_organisms_guide_quotes_the_bad_advice_probe_beside_its_control_seed_by_seed():
    """The guide's table is the committed measurements', and it calls a shift emergent misalignment only
    where the bad-advice organism differs from the good-advice control of its seed (paired, p < 0.05)."""
    guide = " ".join(GUIDE.read_text().split())
    seeds = [s for s in ("", "-s1") if (ROOT / f"docs/organisms/bad_advice{s}/compare.json").exists()]
    assert seeds == ["", "-s1"]  # two training seeds of each

    def shifts(name):
        return {
            s["threat_model"]: s
            for s in json.loads((ROOT / f"docs/organisms/{name}/measure.json").read_text())["shifts"]
        }

    compare = {
        s: {
            r["threat_model"]: r
            for r in json.loads((ROOT / f"docs/organisms/bad_advice{s}/compare.json").read_text())["rows"]
        }
        for s in seeds
    }
    for tm in ("compassion", "honesty", "refusal"):
        base = shifts("good_advice")[tm]
        row = f"| {tm} | {_pct(base['trait_base'], base['trait_base_ci'])} |"
        for s in seeds:
            good, bad, c = shifts(f"good_advice{s}")[tm], shifts(f"bad_advice{s}")[tm], compare[s][tm]
            assert (
                good["ids"] == bad["ids"] and good["n"] == bad["n"] == 48 and c["n"] == 48
            )  # the same prompts
            assert good["trait_base"] == base["trait_base"]  # every organism against the same base answers
            row += (
                f" {_pct(good['trait_organism'], good['trait_organism_ci'])} |"
                f" {_pct(bad['trait_organism'], bad['trait_organism_ci'])} | {c['p_value']:.2g} |"
            )
        assert row in guide, row
    assert (
        all(compare[s]["honesty"]["p_value"] >= 0.05 for s in seeds) and "not emergent misalignment" in guide
    )
    em = all(compare[s]["compassion"]["p_value"] < 0.05 for s in seeds)
    assert ("emergent-misalignment signature" in guide) == em


def test_every_committed_organism_carries_its_activation_shift_and_the_guide_quotes_it():
    """Issue 30 item 4b: each committed organism's shift along the committed study's SwFC direction of every
    threat model it is measured on, beside its trait change, in measure.json and in the guide's table."""
    guide = " ".join(GUIDE.read_text().split())
    names = ("dishonest", "dismissive", "bad_advice", "bad_advice-s1", "good_advice", "good_advice-s1")
    for name in names:
        for s in json.loads((ROOT / f"docs/organisms/{name}/measure.json").read_text())["shifts"]:
            a = s["activation_shift"]
            steering = ROOT / (a["steering"] + ".json")
            assert steering.is_file() and steering.name.startswith(f"{s['threat_model']}_SwFC_kl0.5_L"), a
            placed = json.loads(steering.read_text())["steerings"]["steering"]["placement"]["layers"]
            assert placed[0] == a["layer"] and a["n"] == s["n"] == 48
            assert a["ci"][0] <= a["mean"] <= a["ci"][1]
            row = (
                f"| {name} | {s['threat_model']} | {100 * s['trait_base']:.1f}% -> "
                f"{100 * s['trait_organism']:.1f}% ({s['p_value']:.2g}) | {a['mean']:+.2f} "
                f"[{a['ci'][0]:+.2f}, {a['ci'][1]:+.2f}] | {a['layer']} |"
            )
            assert row in guide, row
