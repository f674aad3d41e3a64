"""The algorithm registry: built-in discovery methods plus plugins from the
``circuitdag.algorithms`` entry points.

A plugin distribution declares, in its pyproject.toml::

    [project.entry-points."circuitdag.algorithms"]
    my-method = "my_package.method:MyMethod"

where ``MyMethod`` is an :class:`~circuitdag.algorithms.base.Algorithm` subclass (or an
instance) in one file. ``circuitdag discover --algorithm my-method``, ``circuitdag sweep
--algorithm my-method``, ``circuitdag algorithms``, ``circuitdag curve`` and
:func:`circuitdag.discover` then use it with no change to circuitdag. The built-ins are
declared the same way in circuitdag's own pyproject.toml; the table below is the same list,
used when circuitdag runs from a source tree that was never installed. Listing names
imports nothing; a plugin that fails to load is skipped with a warning naming its
distribution (:func:`all_algorithms`) or refused with one line (:func:`get_algorithm`).
"""

from __future__ import annotations

import warnings

from circuitdag._plugins import load_target, sources
from circuitdag.algorithms.base import Algorithm as Algorithm
from circuitdag.algorithms.base import Found as Found
from circuitdag.algorithms.base import Option as Option
from circuitdag.algorithms.base import RunContext as RunContext
from circuitdag.errors import ConfigError

ENTRY_POINT_GROUP = "circuitdag.algorithms"

#: Built-in methods, exactly as declared in pyproject.toml's entry points.
BUILTIN: dict[str, str] = {
    "acdc": "circuitdag.algorithms.acdc:ACDC",
    "acdc-reference": "circuitdag.algorithms.acdc:ACDCReference",
    "eap": "circuitdag.algorithms.attribution:EAP",
    "eap-ig": "circuitdag.algorithms.attribution:EAPIG",
    "acdc-prefiltered": "circuitdag.algorithms.prefiltered:PrefilteredACDC",
    "edge-pruning": "circuitdag.algorithms.edge_pruning:EdgePruning",
    "ugs": "circuitdag.algorithms.ugs:UGS",
    "eap-ig-activations": "circuitdag.algorithms.eapig_activations:EAPIGActivations",
    "information-flow-routes": "circuitdag.algorithms.information_flow:InformationFlowRoutes",
}

_cache: dict[str, Algorithm] = {}


def algorithm_names() -> list[str]:
    """Every registered name, built-ins first (imports no method)."""
    found = sources(ENTRY_POINT_GROUP, BUILTIN)
    return [*BUILTIN, *sorted(n for n in found if n not in BUILTIN)]


def get_algorithm(name: str | Algorithm | type[Algorithm]) -> Algorithm:
    """The method registered as ``name`` (an :class:`Algorithm`, or its class, passes
    through). Raises :class:`ConfigError` listing the known names, or naming the
    distribution of a plugin that fails to load, whose class calls itself by another name
    than its entry point, or whose ``run`` does not take an option it declares."""
    if isinstance(name, type) and issubclass(name, Algorithm):
        name = name()
    if isinstance(name, Algorithm):
        _check_run(name, name.name or type(name).__name__, "given")
        return name
    if not isinstance(name, str):
        raise ConfigError(f"algorithm must be a registered name or an Algorithm, got a {type(name).__name__}")
    if name in _cache:
        return _cache[name]
    found = sources(ENTRY_POINT_GROUP, BUILTIN)
    if name not in found:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {', '.join(algorithm_names())} "
                          "(see `circuitdag algorithms`)")  # fmt: skip
    target, dist = found[name]
    try:
        obj = load_target(target)
        method = obj() if isinstance(obj, type) else obj
    except Exception as exc:
        raise ConfigError(f"algorithm {name!r} from distribution {dist!r} failed to load: "
                          f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    if not isinstance(method, Algorithm) or not callable(getattr(method, "run", None)):
        raise ConfigError(f"algorithm {name!r} from distribution {dist!r} is a {type(method).__name__}, not a "
                          "circuitdag.algorithms.Algorithm with a run method")  # fmt: skip
    if not method.name:
        method.name = name
    if method.name != name:
        raise ConfigError(f"algorithm plugin {name!r} from distribution {dist!r} calls itself {method.name!r}; its "
                          "entry-point name and its class's name must be the same")  # fmt: skip
    _check_run(method, name, f"from distribution {dist!r}")
    _cache[name] = method
    return method


def _check_run(method: Algorithm, name: str, where: str) -> None:
    """Refuse a method whose ``run`` cannot take the options it declares."""
    import inspect

    try:
        params = inspect.signature(method.run).parameters
    except (TypeError, ValueError):  # a builtin or C callable: trusted
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [o.name for o in method.options if o.name not in params]
    if missing:
        raise ConfigError(f"algorithm {name!r} {where} declares the option {missing[0]!r} but its run() does not "
                          "take it as a keyword argument")  # fmt: skip


def all_algorithms() -> list[Algorithm]:
    """Every method that loads; broken plugins are skipped with a warning naming them."""
    out = []
    for name in algorithm_names():
        try:
            out.append(get_algorithm(name))
        except ConfigError as exc:
            warnings.warn(f"skipping algorithm plugin: {exc}", RuntimeWarning, stacklevel=2)
    return out


# (Algorithm, Found, Option and RunContext are importable from here and documented in
# circuitdag.algorithms.base.)
__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "algorithm_names", "all_algorithms", "get_algorithm"]
