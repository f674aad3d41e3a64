"""circuitdag: automatic circuit discovery in transformer language models.

    import circuitdag as cd
    task = cd.tasks.get("tracr-reverse")
    model = task.load_model()
    circuit = cd.acdc(model, task, threshold=0.001)  # the task's default
    circuit.save("runs/rev/circuit.json"); circuit.to_svg("runs/rev/circuit.svg")
"""

from __future__ import annotations

from circuitdag import acdc as _acdc_search  # noqa: F401  (imported first: `cd.acdc` is the function below)
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
from circuitdag.models import load_model as load_model
from circuitdag.patching import Patcher as Patcher
from circuitdag.tasks import Task as Task
from circuitdag.tasks import TaskData as TaskData
