"""circuitdag: automatic circuit discovery in transformer language models.

    import circuitdag as cd
    task = cd.tasks.get("tracr-reverse")
    model = task.load_model()
    circuit = cd.acdc(model, task, threshold=0.001)  # the task's default
    circuit.save("runs/rev/circuit.json"); circuit.to_svg("runs/rev/circuit.svg")

The public names are imported on first use (PEP 562): ``import circuitdag`` imports no
torch, TransformerLens or transformers, so that the command line answers ``--help`` at
once and a program that needs one module pays for that module only. No submodule shares a
public name, so importing any submodule never replaces a name here (``cd.acdc`` is the
function; the search it runs is :mod:`circuitdag.acdc_search`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> (module, attribute in it; None: the module itself).
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "__version__": ("circuitdag._version", "__version__"),
    "tasks": ("circuitdag.tasks", None),
    "Circuit": ("circuitdag.circuit", "Circuit"),
    "acdc": ("circuitdag.discovery", "acdc"),
    "adopt": ("circuitdag.models.adopt", "adopt"),
    "discover": ("circuitdag.discovery", "discover"),
    "CircuitDagError": ("circuitdag.errors", "CircuitDagError"),
    "Graph": ("circuitdag.graph", "Graph"),
    "ModelSpec": ("circuitdag.graph", "ModelSpec"),
    "Positions": ("circuitdag.graph", "Positions"),
    "load_circuit": ("circuitdag.io", "load_circuit"),
    "load_model": ("circuitdag.loading", "load_model"),
    "Patcher": ("circuitdag.patching", "Patcher"),
    "Task": ("circuitdag.tasks", "Task"),
    "TaskData": ("circuitdag.tasks", "TaskData"),
}

__all__ = ["Circuit", "CircuitDagError", "Graph", "ModelSpec", "Patcher", "Positions", "Task", "TaskData", "acdc",
           "adopt",            "discover", "load_circuit", "load_model", "tasks"]  # fmt: skip


def __getattr__(name: str) -> Any:
    """Import a public name on first use and keep it (later lookups do not come here)."""
    try:
        module, attr = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'circuitdag' has no attribute {name!r}") from None
    obj = importlib.import_module(module)
    if attr is not None:
        obj = getattr(obj, attr)
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what type checkers (and tests/test_imports.py) see
    from circuitdag import tasks as tasks
    from circuitdag._version import __version__ as __version__
    from circuitdag.circuit import Circuit as Circuit
    from circuitdag.discovery import acdc as acdc
    from circuitdag.discovery import discover as discover
    from circuitdag.errors import CircuitDagError as CircuitDagError
    from circuitdag.graph import Graph as Graph
    from circuitdag.graph import ModelSpec as ModelSpec
    from circuitdag.graph import Positions as Positions
    from circuitdag.io import load_circuit as load_circuit
    from circuitdag.loading import load_model as load_model
    from circuitdag.models.adopt import adopt as adopt
    from circuitdag.patching import Patcher as Patcher
    from circuitdag.tasks import Task as Task
    from circuitdag.tasks import TaskData as TaskData
