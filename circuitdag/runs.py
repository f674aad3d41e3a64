"""The cached clean and ablated runs every pass reads (DESIGN.md, patching semantics).

A :class:`Run` is what one forward pass leaves behind at the true positions: every
sender's output (``slots``, in :class:`~circuitdag.layout.Layout`'s slot order) and the
residual stream entering each block, each MLP and the unembedding. :class:`CachedRuns`
holds the clean run, the ablated sender outputs ``S_corr`` (the corrupted prompts' run,
zeros, or the clean run's mean: :class:`Ablation`), their difference ``D_clean`` and the
clean run's metric reference; :func:`cache_runs` makes them with two forward passes (one
for zero and mean ablation).

A capture reads no per-head query/key/value input, so a ``TransformerBridge`` runs it
without forking its residual stream per head (:func:`unsplit_inputs`), and no pass
unembeds every position: the clean run's reference logits are the unembedding of its final
residual stream at the answer positions (:func:`answer_logits`), the readout every metric
uses. On SmolLM2-135M (100 prompts of 10 tokens, one thread) the clean run's capture takes
3.08 s of CPU where it took 4.07 s, with the same values bit for bit
(benchmarks/fixed_costs.py); tests/test_prepare_captures.py checks both against the plain
capture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.components import KernelMismatch, NeuronKernel
from circuitdag.errors import ConfigError, ModelError
from circuitdag.graph import Graph, Input, NodeKind
from circuitdag.hooks import Hook, HookTable
from circuitdag.layout import Layout
from circuitdag.metrics import MetricRef
from circuitdag.readout import at_answers, softcap
from circuitdag.tasks.base import TaskData


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


@dataclass
class Run:
    """One forward pass at the true positions: every sender's output and the (unpatched)
    residual stream entering each block, each MLP and the unembedding."""

    slots: Float[Tensor, "batch pos slot d_model"]
    resid_pre: list[Tensor]  # per layer: batch pos d_model
    mlp_in: list[Tensor]  # per layer (empty tensors without MLPs): batch pos d_model
    resid_final: Float[Tensor, "batch pos d_model"]


@dataclass
class CachedRuns:
    """The clean run, the ablated sender outputs and the clean run's metric reference."""

    clean: Run
    S_corr: Float[Tensor, "batch pos slot d_model"]
    D_clean: Float[Tensor, "batch pos slot d_model"]  # S_clean - S_corr
    ref: MetricRef
    rotary: dict[str, Tensor]  # the model's rotary cos/sin hooks on the clean run
    passes: int  # forward passes it took


@torch.no_grad()
def capture(model: Any, tokens: Tensor, layout: Layout, table: HookTable, d_model: int,
            neurons: dict[int, NeuronKernel], logits: bool = True) -> tuple[Run, Tensor | None, dict[str, Tensor]]:  # fmt: skip
    """The :class:`Run` of ``model`` on ``tokens`` (``batch pos``), its logits (None with
    ``logits=False``: the pass stops at the final residual stream, no unembedding) and its
    rotary ``cos``/``sin``. An MLP split into neurons (``neurons``) gets one slot per
    neuron, computed from the pass's MLP input and checked to sum to the MLP's output."""
    lay, n = layout, layout.n_layers
    B, P = tokens.shape
    p0 = next(model.parameters())
    slots = torch.empty(B, P, lay.n_slots, d_model, device=p0.device, dtype=p0.dtype)
    resid: list[Tensor] = [torch.empty(0)] * (n + 1)
    mlp_in: list[Tensor] = [torch.empty(0)] * n
    rotary: dict[str, Tensor] = {}

    def put_resid(L: int) -> Hook:
        def fn(x: Tensor, hook: Any) -> None:
            resid[L] = x.detach().clone()
            if L == 0:
                slots[:, :, 0] = x
        return fn

    def put_mlp_in(L: int, kind: Input) -> Hook | None:
        def fn(x: Tensor, hook: Any) -> None:
            mlp_in[L] = x.detach().clone()
        return fn if kind == Input.MLP else None

    def put_output(L: int, kind: NodeKind) -> Hook:
        def fn(x: Tensor, hook: Any) -> None:
            if kind == NodeKind.HEAD:
                slots[:, :, lay.head_slot(L, 0) : lay.head_slot(L, 0) + lay.n_heads] = x
            elif L in neurons:  # one slot per neuron, from this pass's MLP input
                try:  # a block whose "MLP" module is more than the MLP (OPT's) fails here
                    out = neurons[L].all_outputs(mlp_in[L])
                    neurons[L].verify(out, x)
                except (KernelMismatch, RuntimeError) as exc:
                    raise ModelError(f"cannot split MLP {L} of this model into neurons: {exc}") from None
                slots[:, :, lay.mlp_slots(L)] = out
            else:
                slots[:, :, lay.mlp_slot(L)] = x
        return fn

    def put_rotary(x: Tensor, hook: Any) -> None:
        rotary[hook.name] = x.detach().clone()

    hooks = table.hooks(resid_pre=put_resid, inputs=put_mlp_in, outputs=put_output)
    hooks += [(name, put_rotary) for name in table.rotary(model)]
    with unsplit_inputs(model, [name for name, _ in hooks]):
        if logits:
            out = model.run_with_hooks(tokens, fwd_hooks=hooks)
        else:  # the hook that keeps the final residual stream runs before the stop
            out = table.run_to_final(model, tokens, hooks, lambda x: None)
    return Run(slots, resid[:n], mlp_in, resid[n]), out, rotary


@contextlib.contextmanager
def unsplit_inputs(model: Any, hook_names: Sequence[Any] = ()) -> Iterator[None]:
    """Within: a ``TransformerBridge`` that forks its residual stream into one query, key
    and value input per head (``use_split_qkv_input``, which the patched passes need) does
    not, so a pass that reads no per-head input does not pay for the copies and per-head
    norms (the same outputs: each head's input is the same stream; tested). Switched back
    on exit; nothing changes for a model without the switch, or when one of ``hook_names``
    is a per-head input hook (``hook_q_input`` ...: the hook check's emulated per-head
    norms of OLMo-2 read them), which exists only while the inputs are split. The switch is
    the model's: no other thread may run a patched pass on the same model meanwhile
    (circuitdag runs none)."""
    switch = getattr(model, "set_use_split_qkv_input", None)
    split_hooks = any(isinstance(n, str) and n.endswith(("hook_q_input", "hook_k_input", "hook_v_input"))
                      for n in hook_names)  # fmt: skip
    if switch is None or split_hooks or not getattr(getattr(model, "cfg", None), "use_split_qkv_input", False):
        yield
        return
    switch(False)
    try:
        yield
    finally:
        switch(True)


def answer_logits(model: Any, resid_final: Float[Tensor, "batch pos d_model"],
                  answer_pos: Tensor) -> Float[Tensor, "batch n_ans vocab"]:  # fmt: skip
    """The logits at the answer positions (``answer_pos``: ``batch n_ans``) from a run's
    final residual stream: the final norm and the unembedding of those positions only (and
    the soft cap of a model that has one), as the readout computes every patched run's
    (:class:`~circuitdag.readout.Readout`), instead of unembedding every position."""
    x = at_answers(resid_final.unsqueeze(0), answer_pos)[0]  # batch n_ans d_model
    return softcap(model, model.unembed(model.ln_final(x)))


@torch.no_grad()
def cache_runs(model: Any, graph: Graph, data: TaskData, layout: Layout, table: HookTable, ablation: Ablation,
               neurons: dict[int, NeuronKernel]) -> CachedRuns:  # fmt: skip
    """The clean run of ``data`` and the ablated sender outputs (see :class:`CachedRuns`):
    the corrupted prompts' run (resample), zeros, or the mean over the dataset's real
    tokens (:func:`mean_activations`; per position for a position-aware graph)."""
    d_model = graph.spec.d_model
    clean, _, rotary = capture(model, data.clean, layout, table, d_model, neurons, logits=False)
    ref = MetricRef(logits=answer_logits(model, clean.resid_final, data.answer_pos), correct=data.correct,
                    wrong=data.wrong, valid=data.valid)  # fmt: skip
    passes = 1
    if ablation == Ablation.RESAMPLE:
        S_corr = capture(model, data.corrupted, layout, table, d_model, neurons, logits=False)[0].slots
        passes += 1
    elif ablation == Ablation.ZERO:
        S_corr = torch.zeros_like(clean.slots)
    else:
        S_corr = mean_activations(clean.slots, data, graph.spec.causal, graph.positions is not None)
    return CachedRuns(clean, S_corr, clean.slots - S_corr, ref, rotary, passes)


def subset_runs(runs: CachedRuns, index: Tensor) -> CachedRuns:
    """The cached runs of the prompts ``index`` (a ``long`` tensor; repeats allowed): the
    rows of every cached tensor, no forward pass. Each prompt's runs involve that prompt
    only, so this equals caching the runs of those prompts for resample and zero ablation
    (tested); a mean ablation's mean is the whole dataset's here, not the subset's."""
    def take(t: Tensor) -> Tensor:
        return t[index.to(t.device)]

    def rows(t: Tensor | None) -> Tensor | None:
        return None if t is None else take(t)

    c, ref = runs.clean, runs.ref
    clean = Run(take(c.slots), [take(x) if x.numel() else x for x in c.resid_pre],
                [take(x) if x.numel() else x for x in c.mlp_in], take(c.resid_final))  # fmt: skip
    # rotary cos/sin (``1 pos dim``) are the same for every prompt
    return CachedRuns(clean, take(runs.S_corr), take(runs.D_clean),
                      MetricRef(take(ref.logits), rows(ref.correct), rows(ref.wrong), rows(ref.valid)),
                      dict(runs.rotary), 0)  # fmt: skip


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


def check_layout(graph: Graph, data: TaskData) -> None:
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


__all__ = ["Ablation", "CachedRuns", "Run", "answer_logits", "cache_runs", "capture", "check_layout", "mean_activations", "real_positions",
           "subset_runs", "unsplit_inputs"]
