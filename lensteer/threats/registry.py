"""The threat models lensteer knows, by name: the bundled ones and any a user registers.

Like SAELens' registry of SAE variants: a module-level mapping, filled by ``register`` when each
threat model's module is imported (``lensteer.threats`` imports the bundled ones), and read by name.
A notebook adds its own with ``lensteer.threats.register(ThreatModel(...))``.
"""

from lensteer.errors import ConfigError
from lensteer.organisms.recipes import register_recipe
from lensteer.threats.model import ThreatModel

_REGISTRY: dict[str, ThreatModel] = {}


def register(tm: ThreatModel, *, replace: bool = False) -> ThreatModel:
    """Add ``tm`` under ``tm.name`` (and its organism recipes); returns it.

    Raises:
        ConfigError: ``tm`` is not a :class:`ThreatModel`, or the name is taken and ``replace`` is false.
    """
    if not isinstance(tm, ThreatModel):
        raise ConfigError(f"register takes a ThreatModel, got {type(tm).__name__}")
    if tm.name in _REGISTRY and not replace:
        raise ConfigError(f"threat model {tm.name!r} is already registered; pass replace=True to replace it")
    taken = {b: other.name for other in _REGISTRY.values() if other.name != tm.name for b in other.benchmarks}
    clash = sorted(f"{b} (by {taken[b]!r})" for b in tm.benchmarks if b in taken)
    if clash:
        raise ConfigError(f"threat model {tm.name!r}: benchmarks already measured by another: {clash}")
    for recipe in tm.recipes:
        register_recipe(recipe, replace=replace)
    _REGISTRY[tm.name] = tm
    return tm


def unregister(name: str) -> ThreatModel:
    """Remove a registered threat model (e.g. a notebook's toy one); returns it."""
    tm = get(name)
    del _REGISTRY[name]
    return tm


def get(name: str) -> ThreatModel:
    """The threat model registered as ``name``.

    Raises:
        ConfigError: No such name; the message lists the registered ones.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ConfigError(
            f"unknown threat model {name!r}; registered: {names()} (add one with lensteer.threats.register)"
        )
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered threat models' names, in order of registration."""
    return tuple(_REGISTRY)


def for_benchmark(fmt: str) -> ThreatModel:
    """The threat model a public benchmark format measures (its ``benchmarks`` name it).

    Raises:
        ConfigError: No registered threat model names ``fmt``; the message lists those that are named.
    """
    for tm in _REGISTRY.values():
        if fmt in tm.benchmarks:
            return tm
    named = sorted(b for tm in _REGISTRY.values() for b in tm.benchmarks)
    raise ConfigError(f"no threat model measures benchmark {fmt!r}; benchmarks with one: {named}")
