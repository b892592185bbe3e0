"""The package layout is a rule, not a convention: imports point down the pipeline only.

core < locate < steering < evaluate < organisms < threats < study < plotting < cli. A module may import lensteer modules of
its own stage or a lower one (``errors`` and ``_types`` sit below everything); lazy imports inside
functions count too, since they couple the stages just the same.
"""

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "lensteer"
STAGES = (
    "errors",
    "_types",
    "_version",
    "core",
    "locate",
    "steering",
    "evaluate",
    "organisms",
    "threats",
    "study",
    "plotting",
    "cli",
    "__main__",
)
RANK = {stage: (0 if stage in ("errors", "_types", "_version") else i) for i, stage in enumerate(STAGES)}


def _stage_of(module: str) -> str | None:
    """``lensteer.core.chat`` -> ``core``; the front door ``lensteer`` itself has no stage."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "lensteer" else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``lensteer...`` module imported anywhere in the file, with its line."""
    package = "lensteer." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("lensteer")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if not name.startswith("lensteer"):
                continue
            if name == "lensteer":  # `from lensteer import core` names a subpackage
                found += [(node.lineno, f"lensteer.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, name))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_belongs_to_a_stage():
    stages = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert stages <= set(STAGES), f"modules outside the known stages: {sorted(stages - set(STAGES))}"


def test_imports_point_down_the_pipeline_only():
    upward = []
    for path in _modules():
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for line, module in _imports(path):
            target = _stage_of(module)
            if target is None and own not in ("cli", "__main__"):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports the front door `lensteer`")
            elif target in RANK and RANK[target] > RANK[own]:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} ({own}) imports {module} ({target})")
    assert upward == [], "upward imports:\n" + "\n".join(upward)


def test_the_import_walker_sees_lazy_and_relative_imports(tmp_path):
    """The rule above is only as good as its walker: a lazy upward import must be caught."""
    fake = PACKAGE / "core" / "_walker_probe.py"
    source = "def f():\n    from lensteer.study import runner\n    from ..plotting import figures\n"
    try:
        fake.write_text(source)
        found = dict((m, ln) for ln, m in _imports(fake))
    finally:
        fake.unlink()
    assert found == {"lensteer.study": 2, "lensteer.plotting": 3}


def _ruff_lint() -> dict:
    return tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["ruff"][
        "lint"
    ]


def test_function_size_is_limited_by_the_complexity_rules():
    # Functions, not modules, are what must stay small: a module cap packs code to fit (and says nothing
    # about a 200-line function in a short module), so the limits are ruff's McCabe and argument rules.
    lint = _ruff_lint()
    assert {"C901", "PLR0913"} <= set(lint["select"]) and not {"C901", "PLR0913"} & set(lint["ignore"])
    assert lint["mccabe"]["max-complexity"] == 12 and lint["pylint"]["max-args"] == 8


def test_only_study_files_still_over_the_limits_are_exempt():
    exempt = {
        path: rules
        for path, rules in _ruff_lint()["per-file-ignores"].items()
        if {"C901", "PLR0913"} & set(rules)
    }
    assert all(p.startswith(("lensteer/study/", "tests/unit/study/")) for p in exempt), exempt
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        pytest.skip("ruff is not installed next to this Python")
    for path, rules in exempt.items():
        for rule in {"C901", "PLR0913"} & set(rules):
            out = subprocess.run(
                [
                    str(ruff),
                    "check",
                    "--isolated",
                    "--select",
                    rule,
                    "--config",
                    "lint.mccabe.max-complexity=12",
                    "--config",
                    "lint.pylint.max-args=8",
                    "--output-format",
                    "concise",
                    path,
                ],
                cwd=PACKAGE.parent,
                capture_output=True,
                text=True,
                check=False,
            )
            assert out.returncode == 1, f"{path} no longer breaks {rule}: remove it from per-file-ignores"


HOOK_NAME_PARTS = (
    "hook_resid",
    "hook_attn_out",
    "hook_mlp_out",
    "hook_z",
    "unembed.hook",
    "hook_in",
    "hook_{",
)


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """String literals (f-string parts included) that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_only_core_sites_spells_transformer_lens_hook_names():
    """Hook names are spelled in core/sites.py alone; every other module asks it (a renamed hook point
    in a new TransformerLens is then a one-line fix)."""
    spelled = [
        f"{path.relative_to(PACKAGE)}:{line} {text!r}"
        for path in _modules()
        if path.relative_to(PACKAGE) != Path("core/sites.py")
        for line, text in _code_strings(path)
        if any(part in text for part in HOOK_NAME_PARTS)
    ]
    assert spelled == []


def test_the_hook_name_check_sees_f_strings():
    probe = PACKAGE / "core" / "_spelling_probe.py"
    try:
        probe.write_text(
            '"""blocks.0.hook_resid_pre in a docstring is fine."""\nNAME = f"blocks.{1}.hook_resid_pre"\n'
        )
        found = [text for _, text in _code_strings(probe) if any(part in text for part in HOOK_NAME_PARTS)]
    finally:
        probe.unlink()
    assert found == [".hook_resid_pre"]


def test_only_steering_installs_steering_hooks():
    """`model.hooks(` with a forward hook appears in core (reading/forward helpers), locate (patching
    needs its own hooks) and steering; nowhere above them."""
    offenders = [
        str(p.relative_to(PACKAGE))
        for p in _modules()
        if p.relative_to(PACKAGE).parts[0] not in ("core", "locate", "steering")
        and "model.hooks(" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


def _threat_model_names() -> tuple[str, ...]:
    from lensteer import threats

    return threats.names()  # the bundled ones and those registered beside them (sycophancy)


def test_only_threats_spells_threat_model_names():
    """What lensteer knows about a threat model lives in its module under threats/: no other module spells
    a bundled threat model's name as a string (a lookup keyed by it, an ``if threat_model == ...``); they
    ask the registry (``lensteer.threats.get``). Docstrings and data files may name them."""
    names = set(_threat_model_names())
    spelled = [
        f"{path.relative_to(PACKAGE)}:{line} {text!r}"
        for path in _modules()
        if path.relative_to(PACKAGE).parts[0] != "threats"
        for line, text in _code_strings(path)
        if text in names
    ]
    assert spelled == [], "threat-model names outside lensteer/threats/:\n" + "\n".join(spelled)


def test_the_threat_model_name_check_sees_keys_comparisons_and_defaults():
    names = _threat_model_names()
    assert len(names) >= 3
    probe = PACKAGE / "study" / "_name_probe.py"
    try:
        probe.write_text(
            f'"""{names[0]} in a docstring is fine."""\nX = {{"{names[1]}": 1}}\n'
            f'def f(tm="{names[2]}"):\n    return tm == "{names[0]}" or "{names[0]}_rows"\n'
        )
        found = [text for _, text in _code_strings(probe) if text in names]
    finally:
        probe.unlink()
    assert sorted(found) == sorted([names[1], names[2], names[0]])
