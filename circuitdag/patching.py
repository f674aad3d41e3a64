"""Cached clean/corrupted runs and "forward with circuit C" (DESIGN.md, patching).

A circuit is a set of present edges. In a forward pass with circuit C each destination
input is ``resid_in_this_pass - sum over absent edges of (sender_now - sender_corrupted)``.
Sender outputs live in *slots*: slot 0 is ``embed``, then per layer its heads and its MLP.
Destination inputs live in *rows*: per layer its q rows (one per head), k and v rows (one
per key/value head), its MLP row, and finally the ``logits`` row. A circuit is then a
dense ``absent[row, slot]`` matrix, kept on the model's device.

Two forward implementations share the caches:

* :meth:`Patcher.reference_metric` -- the obviously correct one: a full forward pass from
  the embedding with every sender captured, one circuit at a time.
* :meth:`Patcher.candidate_metrics` -- the fast one used by speculative ACDC: it starts at
  the destination's layer from the cached clean residual (everything upstream equals the
  clean run) and evaluates K candidate circuits, which differ only in the destination's
  rows, as one batch of K x prompts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.errors import ConfigError, ModelError
from circuitdag.graph import Graph, Input, NodeKind
from circuitdag.metrics import MetricRef, check_finite, get_metric
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
    """Where each sender (slot) and destination input (row) lives in the dense mask."""

    n_layers: int
    n_heads: int
    n_kv: int
    has_mlp: bool
    parallel: bool
    edge_row: np.ndarray  # int64 per edge
    edge_slot: np.ndarray  # int64 per edge

    @property
    def per_layer_slots(self) -> int:
        return self.n_heads + int(self.has_mlp)

    @property
    def n_slots(self) -> int:
        return 1 + self.n_layers * self.per_layer_slots

    def slots_before(self, layer: int) -> int:
        """Number of slots written before block ``layer`` starts (embed + earlier layers)."""
        return 1 + layer * self.per_layer_slots

    def head_slot(self, layer: int, head: int) -> int:
        return self.slots_before(layer) + head

    def mlp_slot(self, layer: int) -> int:
        return self.slots_before(layer) + self.n_heads

    @property
    def per_layer_rows(self) -> int:
        return self.n_heads + 2 * self.n_kv + int(self.has_mlp)

    @property
    def n_rows(self) -> int:
        return self.n_layers * self.per_layer_rows + 1

    def rows(self, layer: int, kind: Input) -> slice:
        base = layer * self.per_layer_rows
        if kind == Input.Q:
            return slice(base, base + self.n_heads)
        if kind == Input.K:
            return slice(base + self.n_heads, base + self.n_heads + self.n_kv)
        if kind == Input.V:
            return slice(base + self.n_heads + self.n_kv, base + self.n_heads + 2 * self.n_kv)
        if kind == Input.MLP:
            return slice(base + self.per_layer_rows - 1, base + self.per_layer_rows)
        return slice(self.n_rows - 1, self.n_rows)

    def readable_slots(self, layer: int, kind: Input) -> int:
        """Slots a row of this (layer, input) may read: a prefix of the slot order."""
        if kind == Input.RESID:
            return self.n_slots
        if kind == Input.MLP and not self.parallel:
            return self.slots_before(layer) + self.n_heads
        return self.slots_before(layer)

    @classmethod
    def of(cls, graph: Graph) -> Layout:
        spec = graph.spec
        lay = cls(spec.n_layers, spec.n_heads, spec.n_kv_heads, not spec.attn_only,
                  spec.parallel_attn_mlp, np.zeros(0, np.int64), np.zeros(0, np.int64))  # fmt: skip
        slot_of_node = np.full(len(graph.nodes), -1, dtype=np.int64)
        for i, n in enumerate(graph.nodes):
            if n.kind == NodeKind.EMBED:
                slot_of_node[i] = 0
            elif n.kind == NodeKind.HEAD:
                slot_of_node[i] = lay.head_slot(n.layer, n.head)
            elif n.kind == NodeKind.MLP:
                slot_of_node[i] = lay.mlp_slot(n.layer)
        t = graph.edges
        rows = np.empty(len(t), dtype=np.int64)
        for e in range(len(t)):
            d = graph.nodes[t.dst[e]]
            kind = Input(t.input[e])
            idx = 0 if d.kind in (NodeKind.MLP, NodeKind.LOGITS) else d.head
            rows[e] = lay.rows(d.layer, kind).start + idx
        slots = slot_of_node[t.src]
        object.__setattr__(lay, "edge_row", rows)
        object.__setattr__(lay, "edge_slot", slots)
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
    with a circuit. ``metric`` compares patched logits with the clean run."""

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
        self.n_forward = 0  # forward passes run (one per batch of candidates)
        self.n_layer_evals = 0  # block evaluations x candidates (a batch of K counts K)
        self._cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}
        self._cache_layer = -1
        with torch.no_grad():
            clean = self._capture(self.data.clean)
            self.S_clean: Float[Tensor, "batch pos slot d_model"] = clean["slots"]
            self.resid_pre: list[Tensor] = clean["resid_pre"]
            self.resid_final: Tensor = clean["resid_final"]
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
            else:
                self.S_corr = self.S_clean.mean(dim=(0, 1), keepdim=True).expand_as(self.S_clean).clone()
            self.D_clean = self.S_clean - self.S_corr

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
                slots[:, :, lay.mlp_slot(L)] = x
            return fn

        def put_final(x, hook):
            resid_pre[n] = x.detach().clone()

        hooks = [(_HOOK["resid_pre"](L), put_resid(L)) for L in range(n)]
        hooks += [(_HOOK["result"](L), put_heads(L)) for L in range(n)]
        if lay.has_mlp:
            hooks += [(_HOOK["mlp_out"](L), put_mlp(L)) for L in range(n)]
        hooks.append((f"blocks.{n - 1}.hook_resid_post", put_final))
        logits = self.model.run_with_hooks(tokens, fwd_hooks=hooks)
        self.n_forward += 1
        return {"slots": slots, "resid_pre": resid_pre[:n], "resid_final": resid_pre[n], "logits": logits}

    def _answer_logits(self, x: Float[Tensor, "k batch pos dim"]) -> Float[Tensor, "k batch n_ans dim"]:
        """``x`` (logits or residuals) at the task's answer positions."""
        ap = self.data.answer_pos
        rows = torch.arange(ap.shape[0], device=ap.device).unsqueeze(1)
        return x[:, rows, ap]

    def metric_of_logits(self, logits: Float[Tensor, "k batch pos vocab"]) -> Float[Tensor, " k"]:
        return self.metric_of_answer_logits(self._answer_logits(logits))

    def metric_of_answer_logits(self, logits: Float[Tensor, "k batch n_ans vocab"]) -> Float[Tensor, " k"]:
        vals = self.metric_fn(logits, self.ref)
        check_finite(vals, "for a patched forward pass")
        return vals

    def absent_matrix(self, alive: np.ndarray) -> Float[Tensor, "row slot"]:
        """Dense ``absent[row, slot]`` (1.0 where the edge is removed) from an alive mask."""
        m = torch.zeros(self.layout.n_rows, self.layout.n_slots, dtype=self.dtype)
        dead = ~np.asarray(alive, dtype=bool)
        m[self.layout.edge_row[dead], self.layout.edge_slot[dead]] = 1.0
        return m.to(self.device)

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def reference_logits(self, absent: Float[Tensor, "row slot"]) -> Float[Tensor, "batch pos vocab"]:
        """Logits of the model with circuit ``absent``: a full pass from the embedding.

        Every sender's output in this pass is captured into ``S_now``; each destination
        input subtracts ``sum_s absent[row, s] * (S_now[s] - S_corr[s])``.
        """
        lay, n = self.layout, self.layout.n_layers
        S_now = torch.zeros_like(self.S_clean)

        def delta(k: int) -> Tensor:
            return S_now[:, :, :k] - self.S_corr[:, :, :k]

        def patch_heads(L: int, kind: Input):
            rows, k = lay.rows(L, kind), lay.readable_slots(L, kind)
            return lambda x, hook: x - torch.einsum("bpsd,hs->bphd", delta(k), absent[rows, :k])

        def patch_single(L: int, kind: Input):
            row, k = lay.rows(L, kind).start, lay.readable_slots(L, kind)
            return lambda x, hook: x - torch.einsum("bpsd,s->bpd", delta(k), absent[row, :k])

        def record(sl: slice, single: bool):
            def fn(x, hook):
                S_now[:, :, sl] = x.unsqueeze(2) if single else x
            return fn

        hooks: list[tuple[str, Callable]] = [(_HOOK["resid_pre"](0), record(slice(0, 1), True))]
        for L in range(n):
            hooks += [(_HOOK[name](L), patch_heads(L, kind)) for kind, name in _QKV]
            hooks.append((_HOOK["result"](L), record(slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads), False)))
            if lay.has_mlp:
                hooks.append((_HOOK["mlp_in"](L), patch_single(L, Input.MLP)))
                hooks.append((_HOOK["mlp_out"](L), record(slice(lay.mlp_slot(L), lay.mlp_slot(L) + 1), True)))
        hooks.append((f"blocks.{n - 1}.hook_resid_post", patch_single(n, Input.RESID)))
        self.n_forward += 1
        self.n_layer_evals += n
        return self.model.run_with_hooks(self.data.clean, fwd_hooks=hooks)

    def reference_metric(self, alive: np.ndarray) -> float:
        logits = self.reference_logits(self.absent_matrix(alive))
        return float(self.metric_of_logits(logits.unsqueeze(0))[0])

    # ------------------------------------------------------------------ fast path
    @torch.no_grad()
    def candidate_metrics(
        self, absent: Float[Tensor, "row slot"], start_layer: int, cand_rows: Tensor, cand_absent: Tensor
    ) -> Float[Tensor, " k"]:
        """Metric of K candidate circuits that equal ``absent`` except on rows
        ``cand_rows`` (shape r), where candidate j uses ``cand_absent[j]`` (shape k r slot).

        Valid only when every sender upstream of the candidates' destination node equals
        the clean run, i.e. all edges into nodes before the destination are present (true
        throughout ACDC, which visits destinations in reverse topological order). The pass
        starts at ``start_layer`` (the destination's layer) from the cached clean residual.
        """
        lay, n = self.layout, self.layout.n_layers
        K, B = cand_absent.shape[0], self.B
        n0 = lay.slots_before(start_layer)
        # In-pass sender deltas for slots >= n0, per candidate.
        D_now = torch.zeros(K, B, self.P, lay.n_slots - n0, self.graph.spec.d_model,
                            device=self.device, dtype=self.dtype)  # fmt: skip
        D_clean0 = self.D_clean[:, :, :n0]
        cand_row_list = cand_rows.tolist()

        def contribution(L: int, kind: Input) -> Tensor:
            """Sum over absent edges of sender deltas for the rows of (L, kind): k b p r d."""
            sl, k = lay.rows(L, kind), lay.readable_slots(L, kind)
            rows = list(range(sl.start, sl.stop))
            mask = absent[sl]  # r slot
            out = self._clean_contribution(start_layer, sl, mask[:, :n0]).unsqueeze(0)
            if k > n0:
                out = out + torch.einsum("kbpsd,rs->kbprd", D_now[:, :, :, : k - n0], mask[:, n0:k])
            hit = [(i, rows.index(r)) for i, r in enumerate(cand_row_list) if r in rows]
            if hit:
                out = out.expand(K, -1, -1, -1, -1).clone()
                for ci, ri in hit:
                    diff = cand_absent[:, ci, :k] - mask[ri, :k]  # k slot
                    adj = torch.einsum("bpsd,ks->kbpd", D_clean0, diff[:, :n0])
                    if k > n0:
                        adj = adj + torch.einsum("kbpsd,ks->kbpd", D_now[:, :, :, : k - n0], diff[:, n0:k])
                    out[:, :, :, ri] += adj
            return out

        def flat(t: Tensor) -> Tensor:
            return t.expand(K, *t.shape[1:]).reshape(K * B, *t.shape[2:])

        def patch_heads(L: int, kind: Input):
            def fn(x, hook):
                return x - flat(contribution(L, kind))
            return fn

        def patch_single(L: int, kind: Input):
            def fn(x, hook):
                return x - flat(contribution(L, kind)[:, :, :, 0])
            return fn

        def stop_with_final(x, hook):
            raise _StopForward(x - flat(contribution(n, Input.RESID)[:, :, :, 0]))

        def record(first_slot: int, count: int, single: bool):
            def fn(x, hook):
                x = x.reshape(K, B, *x.shape[1:])
                if single:
                    x = x.unsqueeze(3)
                lo = first_slot - n0
                D_now[:, :, :, lo : lo + count] = x - self.S_corr[:, :, first_slot : first_slot + count]
            return fn

        resid = self.resid_pre[start_layer] if start_layer < n else self.resid_final
        resid = resid.unsqueeze(0).expand(K, -1, -1, -1).reshape(K * B, self.P, -1)
        if start_layer == n:  # destination is logits: patch the final residual directly
            final = resid - flat(contribution(n, Input.RESID)[:, :, :, 0])
        else:
            hooks: list[tuple[str, Callable]] = []
            for L in range(start_layer, n):
                hooks += [(_HOOK[name](L), patch_heads(L, kind)) for kind, name in _QKV]
                hooks.append((_HOOK["result"](L), record(lay.head_slot(L, 0), lay.n_heads, False)))
                if lay.has_mlp:
                    hooks.append((_HOOK["mlp_in"](L), patch_single(L, Input.MLP)))
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
        return self.metric_of_answer_logits(self._unembed_answers(final.reshape(K, B, self.P, -1)))

    def _unembed_answers(self, final: Float[Tensor, "k batch pos d_model"]) -> Float[Tensor, "k batch n_ans vocab"]:
        """Logits at the answer positions only, from the final residual stream."""
        x = self._answer_logits(final)  # k batch n_ans d_model
        k, b, a, d = x.shape
        logits = self.model.unembed(self.model.ln_final(x.reshape(k * b, a, d)))
        return logits.reshape(k, b, a, -1)

    def _clean_contribution(self, start_layer: int, rows: slice, mask: Tensor) -> Tensor:
        """``einsum(D_clean[:, :, :n0], mask)`` for a row group, cached per start layer.

        The senders before the start layer are the same in every candidate and every batch
        of a destination, so their contribution is computed once and reused while the
        group's mask rows are unchanged (they change only when ACDC accepts a removal)."""
        if self._cache_layer != start_layer:
            self._cache.clear()
            self._cache_layer = start_layer
        key = (rows.start, rows.stop)
        hit = self._cache.get(key)
        if hit is not None and torch.equal(hit[0], mask):
            return hit[1]
        n0 = mask.shape[1]
        out = torch.einsum("bpsd,rs->bprd", self.D_clean[:, :, :n0], mask)
        self._cache[key] = (mask.clone(), out)
        return out
