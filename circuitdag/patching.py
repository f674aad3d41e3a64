"""Cached clean/corrupted runs and "forward with circuit C" (DESIGN.md, patching).

A circuit is a set of present edges. In a forward pass with circuit C each destination
input is ``resid_in_this_pass - sum over absent edges of (sender_now - sender_corrupted)``.
Sender outputs live in *slots* and destination inputs in *rows* of a dense
``absent[row, view, pos, slot]`` matrix, kept on the model's device
(:class:`~circuitdag.layout.Layout`).

:class:`Patcher` ties the engine's pieces together: the mask geometry
(:mod:`circuitdag.layout`), the hook table (:mod:`circuitdag.hooks`), the cached runs
(:mod:`circuitdag.runs`), the readout (:mod:`circuitdag.readout`) and the passes. Three
exact forward implementations share the caches:

* :meth:`Patcher.reference_metric` -- the obviously correct one: a full forward pass from
  the embedding with every sender captured, one circuit at a time, dense sums over slots
  (:func:`circuitdag.passes.full_pass`).
* :meth:`Patcher.circuit_metric` -- the same pass with sparse sums (only the slots with an
  absent edge, or ``total - present`` when fewer are present) that stops at the final
  residual stream (:meth:`Patcher.sparse_final`); on plain graphs only the circuit's own
  nodes are computed (:mod:`circuitdag.node_pass`). Every reported metric uses it (both
  tested equal to the reference).
* :meth:`Patcher.candidate_metrics` -- the fast one used by speculative ACDC: it starts at
  the destination's layer from a cached *base* run (the clean run, or the run of the
  circuit ACDC started from, :meth:`Patcher.rebase`), in which everything upstream of the
  destination has its current value, and evaluates K candidate circuits, which differ
  only in the destination's rows, as one batch of K x prompts
  (:mod:`circuitdag.layered`).

The differentiable masked pass (:func:`circuitdag.masked.masked_metric`, the pass with a
continuous mask and gradients) and gradient attribution (:mod:`circuitdag.attribution`)
read the same caches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.components import ComponentKernels, KernelMismatch, NeuronKernel
from circuitdag.errors import ConfigError, ModelError
from circuitdag.finals import FINALS_KEPT, Finals  # noqa: F401
from circuitdag.graph import Graph
from circuitdag.hooks import HookTable
from circuitdag.layered import LayerPath
from circuitdag.layout import Layout
from circuitdag.metrics import MetricRef, get_metric
from circuitdag.passes import Views, full_pass
from circuitdag.readout import Readout
from circuitdag.runs import (  # noqa: F401
    Ablation,
    CachedRuns,
    Run,
    cache_runs,
    check_layout,
    mean_activations,
    real_positions,
    subset_runs,
)
from circuitdag.tasks.base import TaskData

#: How many prompts' clean run :meth:`Patcher.kernels` checks the component kernels on.
KERNEL_CHECK_PROMPTS = 8


def _from_runs(path: str, writable: bool = False, doc: str = "") -> Any:
    """A :class:`Patcher` attribute that reads (and writes) ``self.runs.<path>``."""
    *parents, last = path.split(".")

    def owner(self: Patcher) -> Any:
        obj: Any = self.runs
        for name in parents:
            obj = getattr(obj, name)
        return obj

    def set_(self: Patcher, value: Any) -> None:
        setattr(owner(self), last, value)

    return property(lambda self: getattr(owner(self), last), set_ if writable else None, doc=doc)


class Patcher:
    """Caches the clean and corrupted runs of ``model`` on ``data`` and runs the model
    with a circuit. ``metric`` compares patched logits with the clean run.

    Position-aware graphs are run as ``P`` *views* of every prompt (the batch grows by
    ``P``, :class:`~circuitdag.passes.Views`): view ``q`` is the model as query position
    ``q`` sees it.
    """

    S_clean = _from_runs("clean.slots", doc="Every sender's output on the clean run: batch pos slot d_model.")
    S_corr = _from_runs("S_corr", True, "Every sender's ablated output: batch pos slot d_model.")
    D_clean = _from_runs("D_clean", True, "``S_clean - S_corr``.")
    resid_pre = _from_runs("clean.resid_pre", doc="The clean residual stream entering each block.")
    mlp_in = _from_runs("clean.mlp_in", doc="The clean input of each MLP (before its LayerNorm).")
    resid_final = _from_runs("clean.resid_final", doc="The clean final residual stream.")

    def __init__(
        self,
        model: Any,
        graph: Graph,
        data: TaskData,
        ablation: str | Ablation = "resample",
        metric: str | Callable = "kl",
        runs: CachedRuns | None = None,
    ) -> None:
        self.model = model
        self.graph = graph
        self.layout = Layout.of(graph)
        self.table = HookTable.of(model, graph.spec)
        self.ablation = Ablation.parse(ablation)
        metric_fn = get_metric(metric)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.data = data.to(self.device)
        self.B, self.P = self.data.clean.shape
        self.positional = graph.positions is not None
        if self.positional:
            check_layout(graph, self.data)
        self.views = Views(self.layout, self.B, self.P, self.device)
        self.V = self.views.V  # views per prompt
        self.n_forward = 0  # forward passes run (one per batch of candidates)
        self.n_layer_evals = 0  # block evaluations x candidates (a batch of K counts K)
        #: Per-neuron evaluation of the MLPs split into neurons (``ModelSpec.neuron_layers``).
        self.neurons: dict[int, NeuronKernel] = {}
        for L in self.layout.split:
            try:
                self.neurons[L] = NeuronKernel(model, L)
            except (KernelMismatch, AttributeError, RuntimeError, TypeError) as exc:
                raise ModelError(f"cannot split MLP {L} of this model into neurons: {exc}") from None
            if self.neurons[L].d_mlp != graph.spec.d_mlp:
                raise ModelError(f"MLP {L} has {self.neurons[L].d_mlp} neurons, the graph says {graph.spec.d_mlp}")
        if runs is None:
            runs = cache_runs(model, graph, self.data, self.layout, self.table, self.ablation, self.neurons)
        self.runs = runs
        self.n_forward += self.runs.passes
        self.readout = Readout(model, metric_fn, self.data.answer_pos, self.runs.ref, self.runs.clean.resid_final)
        #: 1.0 where an edge exists (``absent``-shaped); the complement of a mask is
        #: ``exists - absent``.
        self.exists = self.absent_matrix(np.zeros(graph.n_edges, dtype=bool))
        self.layers = LayerPath(self)
        #: The final residual streams of the circuits evaluated last, so that the run record,
        #: the held-out check and the trust checks, which ask for the same circuits, pay for
        #: each circuit once (:meth:`final_of`).
        self.finals = Finals(self)

    def subset(self, index: Sequence[int] | np.ndarray | Tensor) -> Patcher:
        """A :class:`Patcher` on the prompts ``index`` (repeats allowed: a bootstrap
        resample, one prompt) with the same model, graph, ablation and metric. Its cached
        runs are rows of these (:func:`~circuitdag.runs.subset_runs`, no forward pass) for
        resample and zero ablation; a mean ablation's mean is the subset's own, so those
        runs are cached afresh."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long)
        data = self.data.subset(idx)
        runs = None if self.ablation == Ablation.MEAN else subset_runs(self.runs, idx)
        return Patcher(self.model, self.graph, data, ablation=self.ablation, metric=self.metric_fn, runs=runs)

    @property
    def ref(self) -> MetricRef:
        """The clean run's outputs at the answer positions, which the metric compares with."""
        return self.runs.ref

    @property
    def metric_fn(self) -> Callable:
        return self.readout.metric_fn

    # ------------------------------------------------------------------ components
    def kernels(self) -> ComponentKernels | None:
        """Per-head and per-MLP kernels of the model (:mod:`circuitdag.components`), verified
        once against the clean run of the first :data:`KERNEL_CHECK_PROMPTS` prompts (every
        position; a kernel is the same function on every prompt, and checking all 100 of a
        SmolLM2 run cost a whole forward pass, 3.1 s); None (the reason in
        :attr:`kernel_problem`) when they do not reproduce the model. Built on first use."""
        if not hasattr(self, "_kernels"):
            self._kernels: ComponentKernels | None = None
            self.kernel_problem: str | None = None
            spec, lay, names = self.graph.spec, self.layout, self.table.names
            rotary = {}
            for L in range(spec.n_layers):
                cos, sin = self.runs.rotary.get(names.cos.format(L=L)), self.runs.rotary.get(names.sin.format(L=L))
                if cos is not None and sin is not None:
                    rotary[L] = (cos, sin)
            b = min(self.B, KERNEL_CHECK_PROMPTS)
            try:
                with torch.no_grad():
                    kern = ComponentKernels(self.model, spec, rotary, self.neurons)
                    kern.verify([x[:b] for x in self.resid_pre], [x[:b] if x.numel() else x for x in self.mlp_in],
                                self.S_clean[:b], lay.head_slot, lay.mlp_slots)  # fmt: skip
                self._kernels = kern
            except (KernelMismatch, AttributeError, RuntimeError, TypeError, IndexError) as exc:
                self.kernel_problem = f"{type(exc).__name__}: {exc}"
        return self._kernels

    # ------------------------------------------------------------------ runs of circuits
    @torch.no_grad()
    def run_of(self, absent: Float[Tensor, "row view pos slot"]) -> Run:
        """The :class:`~circuitdag.runs.Run` of circuit ``absent``: every sender's output and
        the unpatched residual streams of its pass (one sparse pass)."""
        raw: dict[str, Any] = {}
        self._full_pass(absent, raw=raw, sparse=True)
        return Run(raw["slots"], raw["resid_pre"], raw["mlp_in"], raw["resid_final"])

    def rebase(self, alive: np.ndarray | None) -> None:
        """Let the fast path resume from the run of circuit ``alive`` instead of the clean run.

        :meth:`candidate_metrics` is exact when every sender upstream of the destination has
        its value in the base run. With the clean base that means "every edge into an
        earlier node is present" (plain ACDC). A prefiltered ACDC starts from a circuit
        with edges removed everywhere; since ACDC never changes the edges into a node before
        it visits it, the upstream senders keep their values from the run of that starting
        circuit, which ``rebase(start)`` captures (one reference pass). ``None`` (or every
        edge present) goes back to the clean run."""
        full = alive is None or bool(np.all(alive))
        self.layers.set_base(None if full else self.run_of(self.absent_matrix(alive)))  # type: ignore[arg-type]

    def absent_matrix(self, alive: np.ndarray) -> Float[Tensor, "row view pos slot"]:
        """Dense ``absent[row, view, pos, slot]`` (1.0 where the edge is removed) from an
        alive mask (see :class:`~circuitdag.layout.Layout`)."""
        lay = self.layout
        m = torch.zeros(lay.shape, dtype=self.dtype)
        dead = ~np.asarray(alive, dtype=bool)
        m[lay.edge_row[dead], lay.edge_view[dead], lay.edge_pos[dead], lay.edge_slot[dead]] = 1.0
        return m.to(self.device)

    # ------------------------------------------------------------------ exact passes
    @torch.no_grad()
    def reference_logits(
        self,
        absent: Float[Tensor, "row view pos slot"],
        capture: dict[str, Tensor] | None = None,
        raw: dict[str, Any] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits of the model with circuit ``absent``: a full pass from the embedding with
        dense sums (:func:`~circuitdag.passes.full_pass`, which documents ``capture`` and
        ``raw``)."""
        return self._full_pass(absent, capture, raw, sparse=False)

    @torch.no_grad()
    def _full_pass(
        self,
        absent: Float[Tensor, "row view pos slot"],
        capture: dict[str, Tensor] | None = None,
        raw: dict[str, Any] | None = None,
        sparse: bool = False,
    ) -> Tensor:
        """:func:`~circuitdag.passes.full_pass` over every prompt, counted."""
        self.n_forward += 1
        self.n_layer_evals += self.layout.n_layers
        return full_pass(self, absent, capture, raw, sparse)

    def _entry(self, alive: np.ndarray) -> list[Any]:
        """``[final residual stream, metric or None]`` of circuit ``alive`` (:meth:`final_of`)."""
        return self.finals.entry(alive)

    def _empty_final(self) -> Tensor | None:
        """The empty circuit's final residual stream without a pass, or None
        (:meth:`Finals.empty <circuitdag.finals.Finals.empty>`)."""
        return self.finals.empty()

    @property
    def pass_seconds(self) -> float | None:
        """Wall seconds of the last circuit :meth:`final_of` evaluated (None before the first)."""
        return self.finals.pass_seconds

    def node_pass(self) -> Any:
        """The :class:`~circuitdag.node_pass.NodePass` of this patcher (built on first use,
        then shared), or None where it does not apply: position-aware graphs, neuron nodes,
        or component kernels that do not reproduce the model (:meth:`kernels`)."""
        if not hasattr(self, "_node_pass"):
            self._node_pass = None
            if not self.positional and not self.neurons and self.kernels() is not None:
                from circuitdag.node_pass import NodePass

                self._node_pass = NodePass(self)
        return self._node_pass

    @torch.no_grad()
    def sparse_final(self, alive: np.ndarray) -> Float[Tensor, "batch pos d_model"]:
        """The final residual stream of circuit ``alive`` from one full pass with sparse
        sums (:func:`~circuitdag.passes.full_pass`), not kept: the pass :meth:`final_of`
        runs where the node pass does not apply, and the node pass's reference (tested
        equal to :meth:`reference_metric`)."""
        return self._full_pass(self.absent_matrix(np.asarray(alive, dtype=bool)), sparse=True)

    def final_of(self, alive: np.ndarray) -> Float[Tensor, "batch pos d_model"]:
        """The final residual stream of circuit ``alive`` (one bool per edge) at the true
        positions: the clean run's for the full model, the cached runs' for the empty
        circuit where the residual stream allows (:meth:`_empty_final`), else the circuit's
        own nodes on plain graphs (:meth:`node_pass`: only the heads and MLPs with a
        present out-edge are computed) or one sparse pass (:meth:`sparse_final`). The last
        :data:`FINALS_KEPT` circuits are kept, so that asking again for one of them costs
        nothing (the run record, the held-out check and the trust checks measure the same
        circuits). Do not modify the returned tensor. Raises :class:`ConfigError` for a
        mask of the wrong shape."""
        return self._entry(alive)[0]

    @torch.no_grad()
    def circuit_metric(self, alive: np.ndarray) -> float:
        """The metric of circuit ``alive``: the same value as :meth:`reference_metric`
        (tested), computed faster (the circuit's own nodes on plain graphs, else sparse sums
        over edges; only the answer positions unembedded: :meth:`final_of`). What every
        result reports. The full model's value is read off the
        clean run, and a circuit asked for again (the empty one; the circuit a run record
        and its checks all measure) reuses its pass and its value (:meth:`final_of`)."""
        entry = self._entry(alive)
        if entry[1] is None:
            entry[1] = float(self.final_metric(entry[0].unsqueeze(0))[0])
        return entry[1]

    def reference_metric(self, alive: np.ndarray) -> float:
        logits = self.reference_logits(self.absent_matrix(alive))
        return float(self.metric_of_logits(logits.unsqueeze(0))[0])

    @torch.no_grad()
    def candidate_metrics(
        self,
        absent: Float[Tensor, "row view pos slot"],
        start_layer: int,
        cand_rows: Tensor,
        cand_absent: Float[Tensor, "k cell pos slot"],
        cand_views: Tensor | None = None,
        live_positions: Sequence[int] | None = None,
    ) -> Float[Tensor, " k"]:
        """Metric of K candidate circuits that equal ``absent`` except on the cells
        ``(cand_rows[c], cand_views[c])``, where candidate j uses ``cand_absent[j, c]``
        (views default to 0, as without positions).

        Valid only when every sender upstream of the candidates' destination node equals
        the clean run, i.e. all edges into nodes before the destination are present (true
        throughout ACDC, which visits destinations in reverse topological order). The pass
        starts at ``start_layer`` (the destination's layer) from the cached clean residual.

        ``live_positions`` (position-aware graphs): the positions holding a node of layer
        ``>= start_layer`` that still reaches ``logits`` in ``absent`` (and the answer
        positions); only these get a view. Every other position p is computed from the
        caches: its nodes from ``start_layer`` on reach nothing, so every edge out of them
        that matters is absent, and the inputs that read p equal the clean input with
        those senders' outputs replaced by their corrupted ones (see docs/positions.md).
        """
        if self.neurons:
            raise ConfigError("the layer-by-layer fast path does not evaluate neuron nodes; ACDC uses the "
                              "component path for graphs with neurons")  # fmt: skip
        final = self.layers.final(absent, start_layer, cand_rows, cand_absent, cand_views, live_positions)
        self.n_forward += 1
        self.n_layer_evals += cand_absent.shape[0] * (self.layout.n_layers - start_layer)
        return self.final_metric(final)

    # ------------------------------------------------------------------ readout
    def final_metric(self, final: Float[Tensor, "k batch pos d_model"], positions: Tensor | None = None) -> Float[Tensor, " k"]:
        """The metric of ``k`` patched runs from their final residual streams (true
        positions, or only the sorted ``positions``, which must hold every answer
        position); see :class:`~circuitdag.readout.Readout`."""
        return self.readout.final_metric(final, positions)

    def metric_of_logits(self, logits: Float[Tensor, "k batch pos vocab"]) -> Float[Tensor, " k"]:
        return self.readout.metric_of_answer_logits(self.readout.answers(logits))

    def metric_of_answer_logits(self, logits: Float[Tensor, "k batch n_ans vocab"]) -> Float[Tensor, " k"]:
        return self.readout.metric_of_answer_logits(logits)

    def _diagonal(self, x: Tensor, k: int, live: Tensor | None = None, fill: Tensor | None = None) -> Tensor:
        """:meth:`Views.diagonal <circuitdag.passes.Views.diagonal>` of this patcher's views."""
        return self.views.diagonal(x, k, live, fill)


#: ``Ablation``, ``Layout``, ``mean_activations`` and ``real_positions`` are imported from
#: here too; they are documented where they are defined.
__all__ = ["Patcher"]
