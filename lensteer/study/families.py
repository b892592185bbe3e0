"""The families of tests the report adjusts together (Holm, within each threat model), the subsets of the test
prompts it reports apart (refusal: plain and jailbreak-styled requests), and how the tables show a condition
that duplicates another (StMP-push = StMP at matched KL: shown once).
"""

from collections.abc import Mapping
from typing import Any

from lensteer.core.stats import holm, mcnemar_exact, wilson_interval

HOLM_TESTS = ("p_vs_baseline", "p_vs_random", "p_vs_prompting")


def holm_family(entry: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The tests adjusted together within one threat model, as (group, condition, test): every p-value of
    the headline table, each once: each distinct method against the unsteered and prompting baselines
    and the random directions (a twin such as StMP-push repeats its original's tests and is left out),
    the prompting baseline against the unsteered one and the random directions, and the random
    directions against the unsteered baseline (the random vs prompting test is prompting's)."""
    family = [
        ("methods", m, test)
        for m, r in entry.get("methods", {}).items()
        if not r.get("same_as")
        for test in HOLM_TESTS
        if r.get(test) is not None
    ]
    controls = entry.get("controls", {})
    family += [
        ("controls", c, test)
        for c, tests in (("prompting", ("p_vs_baseline", "p_vs_random")), ("random", ("p_vs_baseline",)))
        for test in tests
        if controls.get(c, {}).get(test) is not None
    ]
    return family


def add_holm(entry: dict[str, Any]) -> dict[str, Any]:
    """``entry`` with a ``<test>_holm`` beside each raw p-value of :func:`holm_family` (``None`` where the raw
    one is), a twin given its original's, and ``holm_family`` naming the tests adjusted together."""
    family = holm_family(entry)
    adjusted = holm([entry[g][c][t] for g, c, t in family])
    for (group, cond, test), p in zip(family, adjusted, strict=True):
        entry[group][cond][f"{test}_holm"] = p
    methods, controls = entry.get("methods", {}), entry.get("controls", {})
    for r in methods.values():
        for test in HOLM_TESTS:
            original = methods.get(r.get("same_as") or "", r)
            r.setdefault(f"{test}_holm", original.get(f"{test}_holm"))
    if "random" in controls and "prompting" in controls:
        controls["random"]["p_vs_prompting_holm"] = controls["prompting"].get("p_vs_random_holm")
    for c in controls.values():
        for test in HOLM_TESTS:
            c.setdefault(f"{test}_holm", None)
    entry["holm_family"] = [f"{cond} {test}" for _, cond, test in family]
    return entry


def _subset_rates(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The row's trait on each subset of the test prompts (``trait_subsets``), with n, Wilson interval and
    the exact McNemar p against the unsteered baseline on the same prompts."""
    labels, flags = row.get("trait_subsets"), row.get("trait_flags")
    if not labels or flags is None or len(labels) != len(flags):
        return None
    base = baseline.get("trait_flags") if baseline is not None else None
    out = {}
    for name in dict.fromkeys(labels):
        idx = [i for i, label in enumerate(labels) if label == name]
        mine = [flags[i] for i in idx]
        k, n = sum(mine), len(mine)
        out[name] = {"n_eval": n, "trait": k / n, "trait_ci": list(wilson_interval(k, n))}
        if base is not None and len(base) == len(flags) and row is not baseline:
            out[name]["p_vs_baseline"] = mcnemar_exact(mine, [base[i] for i in idx]).p_value
    return out


def add_subsets(entry: dict[str, Any], by_method: Mapping[str, Any], baseline: Any) -> None:
    """``trait_by_subset`` on the baselines and each method of ``entry`` (threat models with subsets)."""
    targets: list[tuple[dict[str, Any] | None, str]] = [(entry.get("baseline"), "baseline")]
    targets.append((entry.get("controls", {}).get("prompting"), "prompting"))
    targets += [(r, m) for m, r in entry.get("methods", {}).items()]
    for target, method in targets:
        split = _subset_rates(by_method.get(method, {}), baseline)
        if target is not None and split is not None:
            target["trait_by_subset"] = split


def shown_once(methods: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The methods as the tables name them: a twin (``same_as``) is not shown again but named beside its
    original (``StMP (= StMP-push)``), as both are one edit at matched KL."""
    twins: dict[str, list[str]] = {}
    for m, r in methods.items():
        if r.get("same_as") in methods:
            twins.setdefault(r["same_as"], []).append(m)
    return [
        (f"{m} (= {', '.join(twins[m])})" if m in twins else m, r)
        for m, r in methods.items()
        if r.get("same_as") not in methods
    ]
