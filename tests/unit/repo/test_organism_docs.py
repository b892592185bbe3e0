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
