"""Cached clean/corrupted runs and "forward with circuit C" (DESIGN.md, patching).

A circuit is a set of present edges. In a forward pass with circuit C each destination
input is ``resid_in_this_pass - sum over absent edges of (sender_now - sender_corrupted)``.
Sender outputs live in *slots*: slot 0 is ``embed``, then per layer its heads and its MLP.
Destination inputs live in *rows*: per layer its q rows (one per head), k and v rows (one
per key/value head), its MLP row, and finally the ``logits`` row. A circuit is then a
dense ``absent[row, slot]`` matrix, kept on the model's device.

Three forward implementations share the caches:

* :meth:`Patcher.reference_metric` -- the obviously correct one: a full forward pass from
  the embedding with every sender captured, one circuit at a time, dense sums over slots.
* :meth:`Patcher.circuit_metric` -- the same pass with sparse sums (only the slots with an
  absent edge, or ``total - present`` when fewer are present) that stops at the final
  residual stream; every reported metric uses it (tested equal to the reference).
* :meth:`Patcher.candidate_metrics` -- the fast one used by speculative ACDC: it starts at
  the destination's layer from a cached *base* run (the clean run, or the run of the
  circuit ACDC started from, :meth:`Patcher.rebase`), in which everything upstream of the
  destination has its current value, and evaluates K candidate circuits, which differ
  only in the destination's rows, as one batch of K x prompts.

Gradient attribution (:mod:`circuitdag.attribution`) reads the same caches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.components import ComponentKernels, KernelMismatch, NeuronKernel, plain_module, rotary_hooks
from circuitdag.errors import ConfigError, ModelError
from circuitdag.graph import Graph, Input, NodeKind
from circuitdag.metrics import MetricRef, check_finite, get_metric, logit_diff
from circuitdag.models.bridge import resume
from circuitdag.tasks.base import TaskData


class _StopForward(Exception):
    """Raised by the last hook of a fast pass to hand back the final residual stream."""

    def __init__(self, resid: Tensor) -> None:
        super().__init__("final residual reached")
        self.resid = resid


class Ablation(str, Enum):
    RESAMPLE = "resample"
    ZERO = "zero"
    MEAN = "mean"

    @classmethod
    def parse(cls, value: str | Ablation) -> Ablation:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"unknown ablation {value!r}; choose one of {', '.join(a.value for a in cls)}"
            ) from None


@dataclass(frozen=True)
class Layout:
    """Where each sender (slot) and destination input (row) lives in the dense mask.

    The mask is ``absent[row, view, pos, slot]``. Without positions ``view`` and ``pos``
    have size 1. With positions, ``view`` is the query position ``q`` whose view of the
    model the entry patches and ``pos`` the sender position ``p``: a K or V edge
    ``SRC@p -> a@q`` is ``absent[k_row, q, p, SRC]``; every other input reads its own
    position only, so its edges sit on the diagonal (``absent[q_row, q, q, SRC]``;
    ``SRC@p -> logits`` is ``absent[logits_row, p, p, SRC]``).
    """

    n_layers: int
    n_heads: int
    n_kv: int
    has_mlp: bool
    parallel: bool
    n_pos: int  # positions of the graph; 1 without positions
    positional: bool
    edge_row: np.ndarray  # int64 per edge
    edge_slot: np.ndarray  # int64 per edge
    edge_view: np.ndarray  # int64 per edge (0 without positions)
    edge_pos: np.ndarray  # int64 per edge (0 without positions)
    #: Sender slots (and MLP input rows) of each layer's MLP: 1, or ``d_mlp`` for a layer
    #: split into neurons (``ModelSpec.neuron_layers``); empty means 1 per layer.
    mlp_units: tuple[int, ...] = ()

    def units(self, layer: int) -> int:
        """MLP slots (= MLP input rows) of ``layer``: 0 without MLPs, ``d_mlp`` when split."""
        if not self.has_mlp:
            return 0
        return self.mlp_units[layer] if self.mlp_units else 1

    @cached_property
    def _slot_start(self) -> np.ndarray:
        """First slot of each layer (and, at ``n_layers``, the number of slots)."""
        sizes = [self.n_heads + self.units(L) for L in range(self.n_layers)]
        return np.concatenate([[1], 1 + np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    @cached_property
    def _row_start(self) -> np.ndarray:
        """First row of each layer (and, at ``n_layers``, the ``logits`` row)."""
        sizes = [self.n_heads + 2 * self.n_kv + self.units(L) for L in range(self.n_layers)]
        return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)

    @property
    def split(self) -> tuple[int, ...]:
        """The layers whose MLP is split into neurons."""
        return tuple(L for L in range(self.n_layers) if self.units(L) > 1)

    @property
    def n_slots(self) -> int:
        return int(self._slot_start[-1])

    def slots_before(self, layer: int) -> int:
        """Number of slots written before block ``layer`` starts (embed + earlier layers)."""
        return int(self._slot_start[layer])

    def head_slot(self, layer: int, head: int) -> int:
        return self.slots_before(layer) + head

    def mlp_slot(self, layer: int) -> int:
        """The (first) slot of the MLP of ``layer``."""
        return self.slots_before(layer) + self.n_heads

    def mlp_slots(self, layer: int) -> slice:
        """The slots of the MLP of ``layer``: one, or one per neuron."""
        return slice(self.mlp_slot(layer), self.mlp_slot(layer) + self.units(layer))

    @property
    def n_rows(self) -> int:
        return int(self._row_start[-1]) + 1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of the ``absent`` mask: rows, views, sender positions, slots."""
        return (self.n_rows, self.n_pos, self.n_pos, self.n_slots)

    def rows(self, layer: int, kind: Input) -> slice:
        base = int(self._row_start[min(layer, self.n_layers)])
        if kind == Input.Q:
            return slice(base, base + self.n_heads)
        if kind == Input.K:
            return slice(base + self.n_heads, base + self.n_heads + self.n_kv)
        if kind == Input.V:
            return slice(base + self.n_heads + self.n_kv, base + self.n_heads + 2 * self.n_kv)
        if kind == Input.MLP:
            start = base + self.n_heads + 2 * self.n_kv
            return slice(start, start + self.units(layer))
        return slice(self.n_rows - 1, self.n_rows)

    def row_layer_kind(self, r: int) -> tuple[int, Input]:
        """The layer and input of row ``r`` (``logits``: ``n_layers``, RESID)."""
        if r == self.n_rows - 1:
            return self.n_layers, Input.RESID
        L = int(np.searchsorted(self._row_start, r, side="right")) - 1
        i = r - int(self._row_start[L])
        if i < self.n_heads:
            return L, Input.Q
        if i < self.n_heads + self.n_kv:
            return L, Input.K
        if i < self.n_heads + 2 * self.n_kv:
            return L, Input.V
        return L, Input.MLP

    def head_rows(self, layer: int, head: int, kv: int) -> tuple[int, int, int]:
        """The q row of ``head`` and the k and v rows of its key/value head ``kv``."""
        return (self.rows(layer, Input.Q).start + head, self.rows(layer, Input.K).start + kv,
                self.rows(layer, Input.V).start + kv)  # fmt: skip

    def readable_slots(self, layer: int, kind: Input) -> int:
        """Slots a row of this (layer, input) may read: a prefix of the slot order."""
        if kind == Input.RESID:
            return self.n_slots
        if kind == Input.MLP and not self.parallel:
            return self.slots_before(layer) + self.n_heads
        return self.slots_before(layer)

    def crosses_positions(self, kind: Input) -> bool:
        """Whether rows of this input read other positions (K and V with positions)."""
        return self.positional and kind in (Input.K, Input.V)

    @classmethod
    def of(cls, graph: Graph) -> Layout:
        spec = graph.spec
        empty = np.zeros(0, np.int64)
        units = tuple(spec.units(L) for L in range(spec.n_layers)) if spec.neuron_layers else ()
        lay = cls(spec.n_layers, spec.n_heads, spec.n_kv_heads, not spec.attn_only,
                  spec.parallel_attn_mlp, graph.n_pos, graph.positions is not None,
                  empty, empty, empty, empty, units)  # fmt: skip
        slot_of_comp = np.full(len(graph.components), -1, dtype=np.int64)
        for i, n in enumerate(graph.components):
            if n.kind == NodeKind.EMBED:
                slot_of_comp[i] = 0
            elif n.kind == NodeKind.HEAD:
                slot_of_comp[i] = lay.head_slot(n.layer, n.head)
            elif n.kind == NodeKind.MLP:
                slot_of_comp[i] = lay.mlp_slot(n.layer)
            elif n.kind == NodeKind.NEURON:
                slot_of_comp[i] = lay.mlp_slot(n.layer) + n.head
        t = graph.edges
        rows = np.empty(len(t), dtype=np.int64)
        for e in range(len(t)):
            d = graph.nodes[t.dst[e]]
            kind = Input(t.input[e])
            idx = 0 if d.kind in (NodeKind.MLP, NodeKind.LOGITS) else d.head  # head, kv group or neuron
            rows[e] = lay.rows(d.layer, kind).start + idx
        src_pos = np.maximum(t.src_pos.astype(np.int64), 0)
        dst_pos = t.dst_pos.astype(np.int64)
        object.__setattr__(lay, "edge_row", rows)
        object.__setattr__(lay, "edge_slot", slot_of_comp[t.src.astype(np.int64) // graph.n_pos])
        object.__setattr__(lay, "edge_view", np.where(dst_pos >= 0, dst_pos, src_pos))
        object.__setattr__(lay, "edge_pos", src_pos)
        return lay


#: TransformerLens hook names the engine reads and writes, by layer.
_HOOK: dict[str, Callable[[int], str]] = {
    "q": lambda L: f"blocks.{L}.hook_q_input",
    "k": lambda L: f"blocks.{L}.hook_k_input",
    "v": lambda L: f"blocks.{L}.hook_v_input",
    "result": lambda L: f"blocks.{L}.attn.hook_result",
    "mlp_in": lambda L: f"blocks.{L}.hook_mlp_in",
    "mlp_out": lambda L: f"blocks.{L}.hook_mlp_out",
    "resid_pre": lambda L: f"blocks.{L}.hook_resid_pre",
}
_QKV = ((Input.Q, "q"), (Input.K, "k"), (Input.V, "v"))


class Patcher:
    """Caches the clean and corrupted runs of ``model`` on ``data`` and runs the model
    with a circuit. ``metric`` compares patched logits with the clean run.

    Position-aware graphs are run as ``P`` *views* of every prompt (the batch grows by
    ``P``): view ``q`` is the model as query position ``q`` sees it. At every input hook
    the true residual stream at position ``p`` is taken from view ``p`` (the diagonal),
    and view ``q`` gets the inputs of query ``q``: at position ``p`` the residual minus
    the contributions of the edges absent for the pair ``(q, p)``. Position ``q`` of view
    ``q`` is then exactly the patched model at ``q``; its head and MLP outputs are read
    off the diagonal. Nothing but the documented hooks is used, so this works for every
    architecture (rotary embeddings, grouped-query attention, non-causal attention).
    """

    def __init__(
        self,
        model: Any,
        graph: Graph,
        data: TaskData,
        ablation: str | Ablation = "resample",
        metric: str | Callable = "kl",
    ) -> None:
        self.model = model
        self.graph = graph
        self.layout = Layout.of(graph)
        self.ablation = Ablation.parse(ablation)
        self.metric_fn = get_metric(metric)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.data = data.to(self.device)
        self.B, self.P = self.data.clean.shape
        self.positional = graph.positions is not None
        if self.positional:
            _check_layout(graph, self.data)
        self.V = self.P if self.positional else 1  # views per prompt
        self._diag_idx = torch.arange(self.P, device=self.device)
        self.n_forward = 0  # forward passes run (one per batch of candidates)
        self.n_layer_evals = 0  # block evaluations x candidates (a batch of K counts K)
        # Caches valid for one start layer of the fast path (see _caches_for).
        self._contrib_cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._input_cache: dict[tuple[int, int], Tensor] = {}
        self._total_cache: dict[int, Tensor] = {}
        self._cache_layer = -1
        #: Per-neuron evaluation of the MLPs split into neurons (``ModelSpec.neuron_layers``).
        self.neurons: dict[int, NeuronKernel] = {}
        for L in self.layout.split:
            try:
                self.neurons[L] = NeuronKernel(model, L)
            except (KernelMismatch, AttributeError, RuntimeError, TypeError) as exc:
                raise ModelError(f"cannot split MLP {L} of this model into neurons: {exc}") from None
            if self.neurons[L].d_mlp != graph.spec.d_mlp:
                raise ModelError(f"MLP {L} has {self.neurons[L].d_mlp} neurons, the graph says {graph.spec.d_mlp}")
        with torch.no_grad():
            clean = self._capture(self.data.clean)
            self.S_clean: Float[Tensor, "batch pos slot d_model"] = clean["slots"]
            self.resid_pre: list[Tensor] = clean["resid_pre"]
            self.resid_final: Tensor = clean["resid_final"]
            self.mlp_in: list[Tensor] = clean["mlp_in"]
            self._rotary: dict[str, Tensor] = clean["rotary"]
            self.ref = MetricRef(
                logits=self._answer_logits(clean["logits"].unsqueeze(0))[0],
                correct=self.data.correct,
                wrong=self.data.wrong,
                valid=self.data.valid,
            )
            if self.ablation == Ablation.RESAMPLE:
                self.S_corr = self._capture(self.data.corrupted)["slots"]
            elif self.ablation == Ablation.ZERO:
                self.S_corr = torch.zeros_like(self.S_clean)
            else:  # mean over the dataset's real tokens; per position in position-aware mode
                self.S_corr = mean_activations(self.S_clean, self.data, graph.spec.causal, self.positional)
            self.D_clean = self.S_clean - self.S_corr
        #: 1.0 where an edge exists (``absent``-shaped); the complement of a mask is
        #: ``exists - absent``.
        self.exists = self.absent_matrix(np.zeros(graph.n_edges, dtype=bool))
        self._set_base(None)
        self._m_full: float | None = None  # circuit_metric of every edge / of no edge, once known
        self._m_none: float | None = None
        self._cols_checked = False
        self._cols: tuple[Any, Tensor, Tensor | None, MetricRef] | None = None

    # ------------------------------------------------------------------ components
    def kernels(self) -> ComponentKernels | None:
        """Per-head and per-MLP kernels of the model (:mod:`circuitdag.components`), verified
        once against the clean run; None (the reason in :attr:`kernel_problem`) when they do
        not reproduce the model. Built on first use."""
        if not hasattr(self, "_kernels"):
            self._kernels: ComponentKernels | None = None
            self.kernel_problem: str | None = None
            spec, lay = self.graph.spec, self.layout
            rotary = {}
            for L in range(spec.n_layers):
                cos, sin = self._rotary.get(f"blocks.{L}.attn.hook_cos"), self._rotary.get(f"blocks.{L}.attn.hook_sin")
                if cos is not None and sin is not None:
                    rotary[L] = (cos, sin)
            try:
                with torch.no_grad():
                    kern = ComponentKernels(self.model, spec, rotary, self.neurons)
                    kern.verify(self.resid_pre, self.mlp_in, self.S_clean, lay.head_slot, lay.mlp_slots)
                self._kernels = kern
            except (KernelMismatch, AttributeError, RuntimeError, TypeError, IndexError) as exc:
                self.kernel_problem = f"{type(exc).__name__}: {exc}"
        return self._kernels

    # ------------------------------------------------------------------ base run
    def _set_base(self, base: dict[str, Any] | None) -> None:
        """The run the fast path resumes from: the clean run (``None``), or a patched run
        captured by :meth:`rebase`."""
        if base is None:
            self.S_base, self.D_base = self.S_clean, self.D_clean
            self.base_resid_pre, self.base_mlp_in = self.resid_pre, self.mlp_in
            self.base_resid_final = self.resid_final
        else:
            self.S_base = base["slots"]
            self.D_base = self.S_base - self.S_corr
            self.base_resid_pre, self.base_mlp_in = base["resid_pre"], base["mlp_in"]
            self.base_resid_final = base["resid_final"]
        self._cache_layer = -1  # the next _caches_for empties the caches made from the old base

    @torch.no_grad()
    def rebase(self, alive: np.ndarray | None) -> None:
        """Let the fast path resume from the run of circuit ``alive`` instead of the clean run.

        :meth:`candidate_metrics` is exact when every sender upstream of the destination has
        its value in the base run. With the clean base that means "every edge into an
        earlier node is present" (plain ACDC). A prefiltered ACDC starts from a circuit
        with edges removed everywhere; since ACDC never changes the edges into a node before
        it visits it, the upstream senders keep their values from the run of that starting
        circuit, which ``rebase(start)`` captures (one reference pass). ``None`` (or every
        edge present) goes back to the clean run."""
        if alive is None or bool(np.all(alive)):
            self._set_base(None)
            return
        raw: dict[str, Any] = {}
        self._full_pass(self.absent_matrix(alive), raw=raw, sparse=True)
        self._set_base(raw)

    # ------------------------------------------------------------------ caching
    def _capture(self, tokens: Tensor) -> dict[str, Any]:
        lay = self.layout
        B, P = tokens.shape
        d = self.graph.spec.d_model
        slots = torch.empty(B, P, lay.n_slots, d, device=self.device, dtype=self.dtype)
        resid_pre: list[Tensor] = [torch.empty(0)] * (lay.n_layers + 1)
        n = lay.n_layers

        def put_resid(L: int):
            def fn(x, hook):
                resid_pre[L] = x.detach().clone()
                if L == 0:
                    slots[:, :, 0] = x
            return fn

        def put_heads(L: int):
            def fn(x, hook):
                slots[:, :, lay.head_slot(L, 0) : lay.head_slot(L, 0) + lay.n_heads] = x
            return fn

        def put_mlp(L: int):
            def fn(x, hook):
                if L in self.neurons:  # one slot per neuron, from this pass's MLP input
                    out = self.neurons[L].all_outputs(mlp_in[L])
                    try:
                        self.neurons[L].verify(out, x)
                    except KernelMismatch as exc:
                        raise ModelError(f"cannot split MLP {L} of this model into neurons: {exc}") from None
                    slots[:, :, lay.mlp_slots(L)] = out
                else:
                    slots[:, :, lay.mlp_slot(L)] = x
            return fn

        def put_final(x, hook):
            resid_pre[n] = x.detach().clone()

        mlp_in: list[Tensor] = [torch.empty(0)] * n

        def put_mlp_in(L: int):
            def fn(x, hook):
                mlp_in[L] = x.detach().clone()
            return fn

        hooks = [(_HOOK["resid_pre"](L), put_resid(L)) for L in range(n)]
        if lay.has_mlp:
            hooks += [(_HOOK["mlp_in"](L), put_mlp_in(L)) for L in range(n)]
        hooks += [(_HOOK["result"](L), put_heads(L)) for L in range(n)]
        if lay.has_mlp:
            hooks += [(_HOOK["mlp_out"](L), put_mlp(L)) for L in range(n)]
        hooks.append((f"blocks.{n - 1}.hook_resid_post", put_final))
        rotary: dict[str, Tensor] = {}

        def put_rotary(x, hook):
            rotary[hook.name] = x.detach().clone()

        hooks += [(name, put_rotary) for name in rotary_hooks(self.model, self.graph.spec)]
        logits = self.model.run_with_hooks(tokens, fwd_hooks=hooks)
        self.n_forward += 1
        return {"slots": slots, "resid_pre": resid_pre[:n], "resid_final": resid_pre[n], "mlp_in": mlp_in,
                "logits": logits, "rotary": rotary}  # fmt: skip

    def _answer_logits(self, x: Float[Tensor, "k batch pos dim"], positions: Tensor | None = None) -> Float[Tensor, "k batch n_ans dim"]:
        """``x`` (logits or residuals) at the task's answer positions (``x`` holding only the
        sorted ``positions`` when given)."""
        ap = self.data.answer_pos
        if positions is not None:
            ap = torch.searchsorted(positions, ap)
        rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
        return x[:, rows, ap]

    def metric_of_logits(self, logits: Float[Tensor, "k batch pos vocab"]) -> Float[Tensor, " k"]:
        return self.metric_of_answer_logits(self._answer_logits(logits))

    def metric_of_answer_logits(self, logits: Float[Tensor, "k batch n_ans vocab"]) -> Float[Tensor, " k"]:
        vals = self.metric_fn(logits, self.ref)
        check_finite(vals, "for a patched forward pass")
        return vals

    def absent_matrix(self, alive: np.ndarray) -> Float[Tensor, "row view pos slot"]:
        """Dense ``absent[row, view, pos, slot]`` (1.0 where the edge is removed) from an
        alive mask (see :class:`Layout`)."""
        lay = self.layout
        m = torch.zeros(lay.shape, dtype=self.dtype)
        dead = ~np.asarray(alive, dtype=bool)
        m[lay.edge_row[dead], lay.edge_view[dead], lay.edge_pos[dead], lay.edge_slot[dead]] = 1.0
        return m.to(self.device)

    # ------------------------------------------------------------------ views
    def _tokens_in_views(self, tokens: Tensor) -> Tensor:
        B, P = tokens.shape
        return tokens.unsqueeze(1).expand(B, self.V, P).reshape(B * self.V, P)

    def _diagonal(self, x: Tensor, k: int, live: Tensor | None = None, fill: Tensor | None = None) -> Tensor:
        """Activations of a pass over ``k x batch x views`` sequences -> ``k batch pos ...``:
        position ``p`` read from view ``p`` (every view is the same without positions).

        With ``live`` (positions, in view order) only those positions have a view; the
        others are taken from ``fill`` (``batch pos d_model``, broadcast over heads) or left
        uninitialised when ``fill`` is None."""
        n_views = self.V if live is None else len(live)
        x = x.reshape(k, self.B, n_views, *x.shape[1:])
        if not self.positional:
            return x[:, :, 0]
        if live is None or len(live) == self.P:
            i = self._diag_idx
            return x[:, :, i, i]
        out = x.new_empty(k, self.B, self.P, *x.shape[4:])
        out[:, :, live] = x[:, :, torch.arange(n_views, device=self.device), live]
        if fill is not None:
            dead = torch.ones(self.P, dtype=torch.bool, device=self.device)
            dead[live] = False
            part = fill[:, dead]  # batch dead d_model
            out[:, :, dead] = part.reshape(*part.shape[:2], *([1] * (out.dim() - 4)), -1).expand_as(out[:, :, dead])
        return out

    def _into_views(self, x: Float[Tensor, "k batch view pos ..."], n_views: int | None = None) -> Tensor:
        """``k batch view-or-1 pos ...`` -> the ``(k batch views) pos ...`` layout of a pass."""
        k, n_views = x.shape[0], self.V if n_views is None else n_views
        x = x.expand(k, self.B, n_views, *x.shape[3:])
        return x.reshape(k * self.B * n_views, *x.shape[3:])

    def _contract(self, D: Tensor, mask: Tensor, kind: Input) -> Tensor:
        """Contributions ``sum_s mask * D`` of senders to a group of rows.

        ``D``: ``... batch pos slot d_model`` sender deltas; ``mask``: ``rows view pos slot``
        (the same slots). Returns ``... batch view pos rows d_model``, with a view axis of
        size 1 for rows that read their own position only."""
        if not self.positional:
            return torch.einsum("...bpsd,rs->...bprd", D, mask[:, 0, 0]).unsqueeze(-4)
        if self.layout.crosses_positions(kind):
            return torch.einsum("...bpsd,rvps->...bvprd", D, mask)
        i = self._diag_idx
        return torch.einsum("...bpsd,rps->...bprd", D, mask[:, i, i]).unsqueeze(-4)

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def reference_logits(
        self,
        absent: Float[Tensor, "row view pos slot"],
        capture: dict[str, Tensor] | None = None,
        raw: dict[str, Any] | None = None,
    ) -> Float[Tensor, "batch pos vocab"]:
        """Logits of the model with circuit ``absent``: a full pass from the embedding.

        Every sender's output in this pass is captured into ``S_now``; each destination
        input subtracts ``sum_s absent[row, s] * (S_now[s] - S_corr[s])`` (per view and
        position with positions, see the class docstring). For each hook name that is a
        key of ``capture``, its activation is stored there as ``batch view ...`` (view ``q``
        is what query position ``q`` sees; one view without positions). ``raw`` receives
        what :meth:`rebase` needs: every sender's output (``slots``) and the unpatched
        residual stream before each block (``resid_pre``), before each MLP (``mlp_in``) and
        at the end (``resid_final``), at the true positions (``batch pos ...``).
        """
        return self._full_pass(absent, capture, raw, sparse=False)

    @torch.no_grad()
    def _full_pass(
        self,
        absent: Float[Tensor, "row view pos slot"],
        capture: dict[str, Tensor] | None = None,
        raw: dict[str, Any] | None = None,
        sparse: bool = False,
    ) -> Tensor:
        """The pass of :meth:`reference_logits`. With ``sparse`` the sums over absent edges
        read only the slots that matter (:meth:`_contract_sparse`, from running sums of the
        sender deltas) and the pass stops at the final residual stream, which it returns
        (``batch pos d_model``, true positions) instead of the logits."""
        lay, n = self.layout, self.layout.n_layers
        S_now = torch.zeros_like(self.S_clean)
        # Running sums over slots of S_now - S_corr (key: number of slots summed).
        totals: dict[int, Tensor] = {0: torch.zeros_like(self.S_clean[:, :, 0])}

        def patched(x: Tensor, L: int, kind: Input) -> Tensor:
            single = x.dim() == 3
            xs = x.unsqueeze(2) if single else x  # (batch views) pos rows d
            sl, k = lay.rows(L, kind), lay.readable_slots(L, kind)
            own = self._diagonal(xs, 1)[0].unsqueeze(1)  # batch 1 pos rows d
            if sparse:
                def columns(cols: Tensor) -> Tensor:
                    return S_now[:, :, cols] - self.S_corr[:, :, cols]

                gone = self._contract_sparse(columns, absent[sl, :, :, :k], self.exists[sl, :, :, :k], kind, totals[k])
            else:
                delta = S_now[:, :, :k] - self.S_corr[:, :, :k]
                gone = self._contract(delta, absent[sl, :, :, :k], kind)
            out = self._into_views((own - gone).unsqueeze(0))
            return out[:, :, 0] if single else out

        def patch(L: int, kind: Input):
            return lambda x, hook: patched(x, L, kind)

        def record(sl: slice, single: bool):
            def fn(x, hook):
                x = self._diagonal(x, 1)[0]
                S_now[:, :, sl] = x.unsqueeze(2) if single else x
                if sparse:
                    totals[sl.stop] = totals[sl.start] + (S_now[:, :, sl] - self.S_corr[:, :, sl]).sum(2)
            return fn

        def stop(x, hook):
            raise _StopForward(self._diagonal(patched(x, n, Input.RESID), 1)[0])

        # MLPs split into neurons: each neuron gets its own input at hook_mlp_in (the model's
        # MLP runs on the unpatched stream and its output is replaced by the neurons' sum).
        pending: dict[int, Tensor] = {}

        def neurons_in(L: int):
            def fn(x, hook):
                sl, k = lay.rows(L, Input.MLP), lay.readable_slots(L, Input.MLP)
                mask = absent[sl, :, :, :k]
                reps, group_of = _unique_rows(mask)  # neurons with the same absent edges share one input
                if sparse:
                    gone = self._contract_sparse(lambda cols: S_now[:, :, cols] - self.S_corr[:, :, cols],
                                                 mask[reps], self.exists[sl][reps][..., :k], Input.MLP, totals[k])
                else:
                    gone = self._contract(S_now[:, :, :k] - self.S_corr[:, :, :k], mask[reps], Input.MLP)
                pending[L] = self.neurons[L].outputs(x.unsqueeze(2) - gone[:, 0], group_of)
                return x
            return fn

        def neurons_out(L: int):
            sl = lay.mlp_slots(L)

            def fn(x, hook):
                out = pending.pop(L)
                S_now[:, :, sl] = out
                if sparse:
                    totals[sl.stop] = totals[sl.start] + (out - self.S_corr[:, :, sl]).sum(2)
                return out.sum(2)
            return fn

        hooks: list[tuple[str, Callable]] = [(_HOOK["resid_pre"](0), record(slice(0, 1), True))]
        for L in range(n):
            hooks += [(_HOOK[name](L), patch(L, kind)) for kind, name in _QKV]
            hooks.append((_HOOK["result"](L), record(slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads), False)))
            if L in self.neurons:
                hooks.append((_HOOK["mlp_in"](L), neurons_in(L)))
                hooks.append((_HOOK["mlp_out"](L), neurons_out(L)))
            elif lay.has_mlp:
                hooks.append((_HOOK["mlp_in"](L), patch(L, Input.MLP)))
                hooks.append((_HOOK["mlp_out"](L), record(slice(lay.mlp_slot(L), lay.mlp_slot(L) + 1), True)))
        hooks.append((f"blocks.{n - 1}.hook_resid_post", stop if sparse else patch(n, Input.RESID)))

        def keep(name: str):
            def fn(x, hook):
                capture[name] = x.detach().reshape(self.B, self.V, *x.shape[1:]).clone()
            return fn

        hooks += [(name, keep(name)) for name in capture or {}]
        if raw is not None:
            raw.update(slots=S_now, resid_pre=[None] * n, mlp_in=[None] * n)

            def put(key: str, L: int | None):
                def fn(x, hook):
                    x = self._diagonal(x, 1)[0].detach().clone()
                    if L is None:
                        raw[key] = x
                    else:
                        raw[key][L] = x
                return fn

            # Registered before the patching hooks on the same names, so they read the
            # unpatched residual stream. The MLP's input is read at hook_mlp_in itself, as
            # _capture reads it: TransformerBridge fires hook_resid_mid *after* hook_mlp_in,
            # with the patched value (a resumed or prefiltered run then started from a
            # wrong cached run, issue 21).
            first = [(_HOOK["resid_pre"](L), put("resid_pre", L)) for L in range(n)]
            if lay.has_mlp:
                first += [(_HOOK["mlp_in"](L), put("mlp_in", L)) for L in range(n)]
            hooks = first + hooks
            hooks.insert(len(first), (f"blocks.{n - 1}.hook_resid_post", put("resid_final", None)))
        self.n_forward += 1
        self.n_layer_evals += n
        tokens = self._tokens_in_views(self.data.clean)
        if not sparse:
            logits = self.model.run_with_hooks(tokens, fwd_hooks=hooks)
            return self._diagonal(logits, 1)[0]
        try:
            self.model.run_with_hooks(tokens, fwd_hooks=hooks)
        except _StopForward as s:
            return s.resid
        raise ModelError("the forward pass never reached the final residual hook")

    @torch.no_grad()
    def circuit_metric(self, alive: np.ndarray) -> float:
        """The metric of circuit ``alive``: the same value as :meth:`reference_metric`
        (tested), computed faster (sparse sums over edges, only the answer positions
        unembedded). What every result reports. The full model's value is read off the
        clean run and the value with every edge removed is computed once, so asking for
        them again costs nothing."""
        alive = np.asarray(alive, dtype=bool)
        if alive.all():  # the full model is the clean run: no pass needed
            if self._m_full is None:
                self._m_full = float(self.final_metric(self.resid_final.unsqueeze(0))[0])
            return self._m_full
        if not alive.any() and self._m_none is not None:  # every edge removed: asked for often
            return self._m_none
        final = self._full_pass(self.absent_matrix(alive), sparse=True)
        value = float(self.final_metric(final.unsqueeze(0))[0])
        if not alive.any():
            self._m_none = value
        return value

    def reference_metric(self, alive: np.ndarray) -> float:
        logits = self.reference_logits(self.absent_matrix(alive))
        return float(self.metric_of_logits(logits.unsqueeze(0))[0])

    # ------------------------------------------------------------------ fast path
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
        lay, n = self.layout, self.layout.n_layers
        if self.neurons:
            raise ConfigError("the layer-by-layer fast path does not evaluate neuron nodes; ACDC uses the "
                              "component path for graphs with neurons")
        K, B, P = cand_absent.shape[0], self.B, self.P
        n0 = lay.slots_before(start_layer)
        cells = list(zip(cand_rows.tolist(), [0] * len(cand_rows) if cand_views is None else cand_views.tolist()))
        live = list(range(P)) if not self.positional or live_positions is None else sorted(set(live_positions))
        V = len(live) if self.positional else 1
        view_of = {p: i for i, p in enumerate(live)}
        live_t = torch.as_tensor(live, device=self.device)
        # In-pass sender deltas for slots >= n0, per candidate (true positions, no views);
        # zero at the positions without a view (their senders count as corrupted).
        D_now = torch.zeros(K, B, P, lay.n_slots - n0, self.graph.spec.d_model,
                            device=self.device, dtype=self.dtype)  # fmt: skip
        # Running sums of D_now over its first slots (key: slot index), for complements.
        total_now: dict[int, Tensor] = {n0: D_now.new_zeros(K, B, P, D_now.shape[-1])}
        D_base0 = self.D_base[:, :, :n0]

        def diagonal(x: Tensor, L: int, kind: Input) -> Tensor:
            fill = self._cached_input(start_layer, L, kind) if len(live) < P else None
            return self._diagonal(x, K, live_t if self.positional else None, fill)

        def into_views(t: Tensor) -> Tensor:
            return self._into_views(t, V)

        def contribution(L: int, kind: Input) -> Tensor:
            """Sum over absent edges of sender deltas into the rows of (L, kind):
            k batch views-or-1 pos rows d."""
            sl, k = lay.rows(L, kind), lay.readable_slots(L, kind)
            cross = lay.crosses_positions(kind)
            mask = absent[sl][:, live_t] if cross else absent[sl]
            exists = self.exists[sl][:, live_t] if cross else self.exists[sl]
            base = self._base_contribution(start_layer, sl, absent[sl][..., :n0], kind)
            base = (base[:, live_t] if cross else base).unsqueeze(0)
            out = base
            if k > n0:
                now = self._contract_sparse(D_now[..., : k - n0, :], mask[..., n0:k], exists[..., n0:k], kind,
                                            total_now[k])  # fmt: skip
                out = out + now
            hit = [(c, r - sl.start, v) for c, (r, v) in enumerate(cells) if sl.start <= r < sl.stop]
            if hit:
                out = out.expand(K, *out.shape[1:]).clone()
                for c, ri, v in hit:
                    if cross:  # every key position, in view v
                        at, view = slice(None), view_of[v]
                    elif self.positional:  # the row reads position v only
                        at, view = slice(v, v + 1), 0
                    else:  # one mask for every position
                        at, view = slice(None), 0
                    # Senders before the start layer: the current row's contribution plus the
                    # few entries in which candidate j's mask differs from it.
                    got = base[:, :, view, at, ri].expand(K, -1, -1, -1).clone()  # k batch pos d
                    diff = cand_absent[:, c, :, :n0] - absent[sl.start + ri, v, :, :n0]  # k pos slot
                    _add_sparse(got, diff[:, at] if self.positional else diff, D_base0[:, at], self.positional)
                    if k > n0:
                        cm = cand_absent[:, c, :, n0:k]
                        cm = cm[:, at] if self.positional else cm.expand(-1, P, -1)
                        got = got + torch.einsum("kbpsd,kps->kbpd", D_now[:, :, at, : k - n0], cm)
                    out[:, :, view, at, ri] = got
            return out

        def patched(x: Tensor, L: int, kind: Input) -> Tensor:
            single = x.dim() == 3
            xs = x.unsqueeze(2) if single else x
            own = diagonal(xs, L, kind).unsqueeze(2)  # k batch 1 pos rows d
            out = into_views(own - contribution(L, kind))
            return out[:, :, 0] if single else out

        def patch(L: int, kind: Input):
            return lambda x, hook: patched(x, L, kind)

        def stop_with_final(x, hook):
            own = diagonal(x, n, Input.RESID)  # k batch pos d
            raise _StopForward(own - contribution(n, Input.RESID)[:, :, 0, :, 0])

        def record(first_slot: int, count: int, single: bool):
            def fn(x, hook):
                x = self._diagonal(x, K, live_t if self.positional else None)  # k batch pos ...
                if single:
                    x = x.unsqueeze(3)
                lo, at = first_slot - n0, live_t if self.positional else slice(None)
                corr = self.S_corr[:, :, first_slot : first_slot + count]
                D_now[:, :, at, lo : lo + count] = x[:, :, at] - corr[:, at]
                total_now[first_slot + count] = total_now[first_slot] + D_now[:, :, :, lo : lo + count].sum(3)
            return fn

        if start_layer == n:  # destination is logits: patch the final residual directly
            own = self.base_resid_final.unsqueeze(0).expand(K, -1, -1, -1)
            final = own - contribution(n, Input.RESID)[:, :, 0, :, 0]
        else:
            resid = self.base_resid_pre[start_layer].unsqueeze(0).unsqueeze(2)  # 1 batch 1 pos d
            resid = into_views(resid.expand(K, -1, -1, -1, -1))
            hooks: list[tuple[str, Callable]] = []
            for L in range(start_layer, n):
                hooks += [(_HOOK[name](L), patch(L, kind)) for kind, name in _QKV]
                hooks.append((_HOOK["result"](L), record(lay.head_slot(L, 0), lay.n_heads, False)))
                if lay.has_mlp:
                    hooks.append((_HOOK["mlp_in"](L), patch(L, Input.MLP)))
                    hooks.append((_HOOK["mlp_out"](L), record(lay.mlp_slot(L), 1, True)))
            # Stop at the final residual: only the answer positions are unembedded.
            hooks.append((f"blocks.{n - 1}.hook_resid_post", stop_with_final))
            try:
                resume(self.model, resid, start_layer, fwd_hooks=hooks)
                raise ModelError("the forward pass never reached the final residual hook")
            except _StopForward as stop:
                final = stop.resid
        self.n_forward += 1
        self.n_layer_evals += K * (n - start_layer)
        return self.final_metric(final)

    def _cached_input(self, start_layer: int, L: int, kind: Input) -> Float[Tensor, "batch pos d_model"]:
        """The base run's input to (layer ``L``, ``kind``) with every sender from
        ``start_layer`` on replaced by its corrupted output (cached per start layer)."""
        self._caches_for(start_layer)
        key = (L, int(kind))
        hit = self._input_cache.get(key)
        if hit is not None:
            return hit
        lay = self.layout
        if kind == Input.RESID:
            base = self.base_resid_final
        elif kind == Input.MLP:
            base = self.base_mlp_in[L]
        else:
            base = self.base_resid_pre[L]
        n0, k = lay.slots_before(start_layer), lay.readable_slots(L, kind)
        out = base - self.D_base[:, :, n0:k].sum(dim=2)
        self._input_cache[key] = out
        return out

    def final_metric(self, final: Float[Tensor, "k batch pos d_model"], positions: Tensor | None = None) -> Float[Tensor, " k"]:
        """The metric of ``k`` patched runs from their final residual streams (true
        positions, or only the sorted ``positions``, which must hold every answer
        position). Metrics that read only a few vocabulary entries (``logit_diff``: the
        correct and wrong answers) unembed only those columns (:meth:`_answer_columns`,
        checked once against the full unembedding)."""
        cols = self._answer_columns()
        if cols is None:
            return self.metric_of_answer_logits(self._unembed_answers(final, positions))
        ln, W_U, b_U, ref = cols
        x = self._answer_logits(final, positions)
        logits = ln(x) @ W_U
        if b_U is not None:
            logits = logits + b_U
        vals = self.metric_fn(logits, ref)
        check_finite(vals, "for a patched forward pass")
        return vals

    def _answer_columns(self) -> tuple[Any, Tensor, Tensor | None, MetricRef] | None:
        """For ``logit_diff``: the final norm, the unembedding restricted to the answer
        tokens, and the metric's reference with token ids renumbered into those columns;
        None for metrics that need the whole vocabulary, or where the restricted
        unembedding does not reproduce the model's logits on the clean run."""
        if self._cols_checked:
            return self._cols
        self._cols_checked = True
        ref = self.ref
        W_U = getattr(self.model, "W_U", None)
        if self.metric_fn is not logit_diff or ref.correct is None or ref.wrong is None or not isinstance(W_U, Tensor):
            return None
        try:
            b_U = getattr(self.model, "b_U", None)
        except AttributeError:
            b_U = None
        cols = torch.unique(torch.cat([ref.correct.flatten(), ref.wrong.flatten()]))
        sub = (plain_module(self.model.ln_final), W_U[:, cols].contiguous(),
               None if not isinstance(b_U, Tensor) else b_U[cols].contiguous(),
               MetricRef(logits=ref.logits[..., cols], correct=torch.searchsorted(cols, ref.correct),
                         wrong=torch.searchsorted(cols, ref.wrong), valid=ref.valid))  # fmt: skip
        with torch.no_grad():
            x = self._answer_logits(self.resid_final.unsqueeze(0))
            want = self._unembed_answers(self.resid_final.unsqueeze(0))[..., cols]
            got = sub[0](x) @ sub[1] + (0 if sub[2] is None else sub[2])
            if got.shape == want.shape and (got - want).abs().max().item() <= _tol(want):
                self._cols = sub
        return self._cols

    def _unembed_answers(self, final: Float[Tensor, "k batch pos d_model"], positions: Tensor | None = None) -> Float[Tensor, "k batch n_ans vocab"]:
        """Logits at the answer positions only, from the final residual stream."""
        x = self._answer_logits(final, positions)  # k batch n_ans d_model
        k, b, a, d = x.shape
        logits = self.model.unembed(self.model.ln_final(x.reshape(k * b, a, d)))
        return logits.reshape(k, b, a, -1)

    def _base_contribution(self, start_layer: int, rows: slice, mask: Tensor, kind: Input) -> Tensor:
        """``_contract(D_base[:, :, :n0], mask)`` for a row group, cached per start layer.

        The senders before the start layer are the same in every candidate and every batch
        of a destination, so their contribution is computed once and reused while the
        group's mask rows are unchanged (they change only when ACDC accepts a removal)."""
        self._caches_for(start_layer)
        key = (rows.start, rows.stop)
        hit = self._contrib_cache.get(key)
        if hit is not None and torch.equal(hit[0], mask):
            return hit[1]
        n0 = mask.shape[-1]
        total = self._total_cache.get(n0)
        if total is None:
            total = self._total_cache[n0] = self.D_base[:, :, :n0].sum(dim=2)
        out = self._contract_sparse(self.D_base[:, :, :n0], mask, self.exists[rows][..., :n0], kind, total)
        self._contrib_cache[key] = (mask.clone(), out)
        return out

    def _contract_sparse(
        self, D: Tensor | Callable[[Tensor], Tensor], mask: Tensor, exists: Tensor, kind: Input, total: Tensor
    ) -> Tensor:
        """:meth:`_contract` that reads only the slots that matter.

        Circuits are sparse: a row group has either few absent senders (early in ACDC) or
        few present ones (later, and in prefiltered runs). The sum over absent edges is
        taken directly over the slots with an absent edge, or as ``total - sum over present
        edges`` over the slots with a present edge, whichever reads fewer slots. ``total``
        (``... batch pos d_model``) is ``D`` summed over its slots; ``exists`` marks the
        edges of the graph (``mask``'s shape). ``D`` may be a function of the slot indices
        returning those slots of ``D``, so that the full tensor is never built."""
        columns = D if callable(D) else (lambda cols: D[..., cols, :])
        absent_cols = (mask != 0).flatten(0, -2).any(0)
        present = exists - mask
        present_cols = (present != 0).flatten(0, -2).any(0)
        if int(absent_cols.sum()) <= int(present_cols.sum()):
            cols = absent_cols.nonzero().squeeze(1)
            return self._contract(columns(cols), mask[..., cols], kind)
        cols = present_cols.nonzero().squeeze(1)
        part = self._contract(columns(cols), present[..., cols], kind)  # ... b v p r d
        # Where the group has edges at all (a row, view and position), every readable slot
        # is a sender, so the sum over existing edges is ``total`` there and 0 elsewhere.
        has = (exists != 0).any(-1).to(total.dtype)  # rows view pos
        if not self.positional:
            has = has[:, 0, 0].reshape(1, 1, -1)  # 1 1 rows
        elif self.layout.crosses_positions(kind):
            has = has.permute(1, 2, 0)  # view pos rows
        else:
            i = self._diag_idx
            has = has[:, i, i].T.unsqueeze(0)  # 1 pos rows
        return total.unsqueeze(-3).unsqueeze(-2) * has.unsqueeze(-1) - part

    def _caches_for(self, start_layer: int) -> None:
        """Empty the fast path's caches when it moves to another start layer."""
        if self._cache_layer != start_layer:
            self._contrib_cache.clear()
            self._input_cache.clear()
            self._total_cache.clear()
            self._cache_layer = start_layer


def _unique_rows(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of ``mask`` (``rows ...``) grouped by equal content: the index of one row per
    group, and each row's group."""
    flat = mask.reshape(mask.shape[0], -1).cpu().numpy()
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    dev = mask.device
    return torch.as_tensor(first, device=dev), torch.as_tensor(inverse.reshape(-1), device=dev)


def _tol(ref: Tensor) -> float:
    """Agreement expected of two computations of ``ref``'s value: sqrt(eps) relative."""
    return torch.finfo(ref.dtype).eps ** 0.5 * (1.0 + ref.abs().max().item())


def _add_sparse(got: Tensor, diff: Tensor, D: Tensor, positional: bool) -> None:
    """``got[j] += sum over slots s, positions p of diff[j, p, s] * D[:, p, s]`` in place,
    reading only the nonzero entries of ``diff``.

    ``got``: ``k batch pos d``; ``diff``: ``k pos slot`` (pos 1 without positions, where the
    mask applies at every position); ``D``: ``batch pos slot d`` (the same positions)."""
    j, p, sl = diff.nonzero(as_tuple=True)
    if j.numel() == 0:
        return
    vals = diff[j, p, sl].to(D.dtype)
    if not positional:  # one mask entry moves the sender at every position
        vecs = D[:, :, sl].permute(2, 0, 1, 3) * vals[:, None, None, None]  # e batch pos d
        got.index_add_(0, j, vecs)
        return
    vecs = D[:, p, sl].permute(1, 0, 2) * vals[:, None, None]  # e batch d
    view = got.permute(0, 2, 1, 3)  # k pos batch d (a view: index_put_ writes into got)
    view.index_put_((j, p), vecs, accumulate=True)


def real_positions(data: TaskData, causal: bool = True) -> Tensor:
    """``(batch, pos)`` mask of the positions whose activations a mean ablation averages.

    In a causal model the tokens after a prompt's last answer position cannot change its
    answers: they are padding (or text the task does not ask about), and averaging them in
    would make the mean depend on how much padding a task appends. So a position counts
    when it is at or before its prompt's last answer position. In a non-causal model
    every position counts.
    """
    B, P = data.clean.shape
    if not causal:
        return torch.ones(B, P, dtype=torch.bool, device=data.clean.device)
    last = data.answer_pos.max(dim=1).values
    return torch.arange(P, device=data.clean.device)[None, :] <= last[:, None]


def mean_activations(
    S: Float[Tensor, "batch pos slot d_model"], data: TaskData, causal: bool, per_position: bool
) -> Float[Tensor, "batch pos slot d_model"]:
    """Mean-ablation values of the sender outputs ``S`` of the clean run, broadcast to its
    shape: the mean over the real tokens (:func:`real_positions`) of every prompt, or in
    position-aware mode (where prompts share one layout) per position over the prompts
    for which that position is real."""
    # Sums in float32 at least (a half-precision sum over thousands of tokens loses digits);
    # einsum avoids a masked copy of S, which is the largest cache.
    acc = torch.promote_types(S.dtype, torch.float32)
    w = real_positions(data, causal).to(acc)
    if per_position:
        mean = torch.einsum("bp,bpsd->psd", w, S.to(acc)) / w.sum(0).clamp(min=1)[:, None, None]
    else:
        mean = torch.einsum("bp,bpsd->sd", w, S.to(acc)) / w.sum().clamp(min=1)
    return mean.to(S.dtype).expand_as(S).clone()


def _check_layout(graph: Graph, data: TaskData) -> None:
    """Position-aware mode: the graph's positions fit the prompts and every prompt reads
    its answers at the same positions."""
    pos = graph.positions
    assert pos is not None
    if data.clean.shape[1] != pos.n:
        raise ConfigError(
            f"the position-aware graph has {pos.n} positions but the prompts have "
            f"{data.clean.shape[1]} tokens; build the graph from the task's data"
        )
    sink = data.shared_answer_positions()
    if sink != pos.sink:
        raise ConfigError(f"the graph's logits read positions {list(pos.sink)} but the task answers at {list(sink)}")
