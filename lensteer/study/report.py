"""The study's report: per threat model, the baseline, the controls and each method at the matched KL
budget, and the Markdown headline table the README shows.
"""

import math
from collections.abc import Sequence
from typing import Any

from lensteer._version import __version__
from lensteer.study.config import StudyConfig

REPORT_FIELDS = ("trait", "trait_ci", "redirect", "redirect_ci", "kl", "perplexity_ratio", "repetition", "over_refusal", "over_refusal_ci",
                 "capability", "steered_share", "scale", "coefficient", "layer")


def build_report(rows: Sequence[dict[str, Any]], config: StudyConfig, located: dict[str, Any],
                 model: dict[str, Any], *, seconds: float) -> dict[str, Any]:
    """The headline report: per threat model, the baseline and each method at the first KL budget."""
    matched = config.kl_budgets[0]
    out: dict[str, Any] = {"lensteer_version": __version__, "model": model, "config": config.to_dict(),
                           "matched_kl_budget": matched, "seconds": round(seconds, 1), "threat_models": {}}
    for tm in config.threat_models:
        mine = [r for r in rows if r["threat_model"] == tm]
        chosen = located.get(tm, {}).get("layer")
        entry: dict[str, Any] = {**located.get(tm, {}), "methods": {}, "controls": {}, "sweep": mine}
        for r in mine:
            picked = {k: r[k] for k in REPORT_FIELDS if k in r}
            if r["method"] == "baseline":
                entry["baseline"] = picked
            elif r["method"] == "random":
                entry["controls"]["random"] = picked
            elif r["kl_budget"] == matched and r["layer"] == chosen:
                entry["methods"][r["method"]] = picked
            elif r["kl_budget"] == matched:  # another layer of a layer sweep
                entry.setdefault("layer_sweep", {}).setdefault(r["method"], {})[str(r["layer"])] = picked
        out["threat_models"][tm] = entry
    return out


def _fmt(value: Any, ci: Any = None, pct: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if pct:
        text = f"{100 * value:.0f}%"
        return f"{text} [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]" if ci else text
    return f"{value:.2f}"


def headline_table(report: dict[str, Any]) -> str:
    """The report's headline numbers as a Markdown table (the README's results table)."""
    lines = [f"Matched KL budget: {report['matched_kl_budget']:g} nats/token. Trait, redirecting refusals and "
             "over-refusal: rate [95% bootstrap CI]. Redirecting refusals: refusals of harmful requests that offer "
             "an alternative or point to help (`RefusalVerdict.redirects`).", "",
             "| threat model | method | trait | redirecting refusals | KL | perplexity ratio | repetition (rep-4) | "
             "over-refusal | capability |",
             "|---|---|---|---|---|---|---|---|---|"]
    for tm, entry in report["threat_models"].items():
        rows = [("baseline", entry.get("baseline")), *list(entry.get("methods", {}).items())]
        rows += [(f"{name} (control)", r) for name, r in entry.get("controls", {}).items()]
        for name, r in rows:
            if r is None:
                continue
            redirect = _fmt(r["redirect"], r.get("redirect_ci"), pct=True) if "redirect" in r else "-"
            lines.append(f"| {tm} | {name} | {_fmt(r['trait'], r.get('trait_ci'), pct=True)} | {redirect} | {_fmt(r.get('kl'))} | "
                         f"{_fmt(r.get('perplexity_ratio'))} | {_fmt(r.get('repetition'))} | "
                         f"{_fmt(r.get('over_refusal'), r.get('over_refusal_ci'), pct=True)} | "
                         f"{_fmt(r.get('capability'), pct=True)} |")
    return "\n".join(lines)
