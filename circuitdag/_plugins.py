"""Plugins by entry point: the one loader both registries use (tasks:
``circuitdag.tasks``, algorithms: ``circuitdag.algorithms``).

A registry names its built-ins as ``"module:attr"`` strings, exactly as circuitdag's own
pyproject.toml declares them, so that listing names never imports them and a source tree
that was never installed still finds them; installed distributions add theirs through the
entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points


def load_target(target: str) -> object:
    """``"package.module:Class.attr"`` -> the object (imports the module)."""
    module, _, attr = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in attr.split("."):
        if part:
            obj = getattr(obj, part)
    return obj


def sources(group: str, builtin: dict[str, str]) -> dict[str, tuple[str, str]]:
    """name -> (target ``"module:attr"``, distribution name): the built-ins, then every
    entry point of ``group`` (a plugin may replace a built-in of the same name)."""
    out = {name: (target, "circuitdag") for name, target in builtin.items()}
    for ep in entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "unknown distribution"
        if dist == "circuitdag" and ep.name in builtin:
            continue
        out[ep.name] = (ep.value, dist)
    return out
