"""EAP-IG-activations as a registered method: MIB's variant of EAP-IG that integrates over
each sender's activation instead of the input embedding (Hanna, Pezzelle & Belinkov 2024;
MIB, Mueller et al. 2025; the code MIB runs: hannamw/EAP-IG, ``get_scores_ig_activations``).

The senders are taken one *group* at a time, as there: ``embed``, then per layer all its
heads together and its MLP. For a group ``g`` and ``k = 1 .. steps`` the clean prompts run
with ``g``'s output replaced by the constant

    x_g(k) = (k / steps) S_clean[g] + (1 - k / steps) S_ablated[g]

(so no gradient flows back through ``g``) and every other node computed as usual; at every
destination input the gradient of the metric is taken, and each edge gets

    score(SRC->DST<in>) = mean over (g, k) of (S_ablated[SRC] - S_clean[SRC]) . dm/d(DST input)

summed over prompts and positions: ``(2 n_layers + 1) x steps`` forward and backward passes
(MIB divides by that count of passes too). Same sign and units as EAP (a positive score:
removing the edge hurts). With ``steps = 1`` every pass is the clean run with one group
frozen, so an edge into ``logits`` gets exactly EAP's score and an edge into a node whose
own gradient path runs through a frozen group gets less (tests/test_eapig_activations.py).

The group's output is replaced without a hook that writes it: each receiver's input gets
``x_g(k) - S_now[g]`` added, which gives the same forward values and cancels the gradient
through ``g``. Plain graphs only (no ``--positions``, no ``--neurons``); EAP-IG (inputs)
covers those.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from circuitdag.algorithms.attribution import EAP
from circuitdag.algorithms.base import Found, Option, RunContext
from circuitdag.attribution import DEFAULT_IG_STEPS, Attribution, default_batch_size
from circuitdag.errors import ConfigError, MetricError
from circuitdag.graph import Input, NodeKind
from circuitdag.hooks import Hook

if TYPE_CHECKING:
    from circuitdag.patching import Patcher


def sender_groups(patcher: Patcher) -> list[tuple[str, slice]]:
    """The groups of sender slots interpolated together: ``embed``, then per layer its
    heads and its MLP (MIB's ``input``, ``a{L}.h0``, ``m{L}``)."""
    lay = patcher.layout
    groups = [("embed", slice(0, 1))]
    for L in range(lay.n_layers):
        groups.append((f"a{L}", slice(lay.head_slot(L, 0), lay.head_slot(L, 0) + lay.n_heads)))
        if lay.has_mlp:
            groups.append((f"m{L}", lay.mlp_slots(L)))
    return groups


def attribute_activations(
    patcher: Patcher, steps: int = DEFAULT_IG_STEPS, batch_size: int | None = None, progress: bool = False
) -> Attribution:
    """EAP-IG-activations scores of every edge (module docstring): float64, edge-table
    order, metric units. Raises :class:`ConfigError` on position-aware graphs or neuron
    nodes and :class:`MetricError` when a score is not finite."""
    if patcher.positional:
        raise ConfigError("eap-ig-activations scores plain graphs only; use eap-ig with --positions")
    if patcher.neurons:
        raise ConfigError("eap-ig-activations does not score neuron nodes (--neurons); use acdc")
    if steps < 1:
        raise ConfigError(f"--ig-steps must be >= 1, got {steps}")
    lay = patcher.layout
    b = default_batch_size(patcher) if batch_size is None else int(batch_size)
    chunks = [slice(i, min(i + b, patcher.B)) for i in range(0, patcher.B, b)]
    valid = patcher.data.valid
    share = [
        float(valid[c].sum()) if valid is not None else float(patcher.data.answer_pos[c].numel())
        for c in chunks
    ]
    groups = sender_groups(patcher)
    dense = torch.zeros(lay.n_rows, lay.n_slots, dtype=torch.float64, device=patcher.device)
    t0 = time.perf_counter()
    bar = tqdm(total=len(chunks) * len(groups) * steps, desc="EAP-IG-act", unit="pass", disable=not progress)
    try:
        for c, w in zip(chunks, share):
            for _, g in groups:
                for k in range(1, steps + 1):
                    _accumulate(patcher, dense, c, g, k / steps, w / sum(share))
                    bar.update(1)
    finally:
        bar.close()
    dense /= len(groups) * steps
    scores = dense[lay.edge_row, lay.edge_slot].cpu().numpy()
    if not np.isfinite(scores).all():
        raise MetricError(
            "eap-ig-activations gave non-finite edge scores: the metric's gradient is not finite"
        )
    passes = len(chunks) * len(groups) * steps
    return Attribution(scores, "eap-ig-activations", steps, b, time.perf_counter() - t0, passes)


def _accumulate(patcher: Patcher, dense: Tensor, c: slice, group: slice, alpha: float, weight: float) -> None:
    """One forward + backward pass over the prompts ``c`` with the senders ``group`` fixed
    at ``alpha`` of the way from ablated to clean; adds ``weight x`` the scores into
    ``dense`` (rows x slots)."""
    lay, n, table = patcher.layout, patcher.layout.n_layers, patcher.table
    S_clean, S_corr = patcher.S_clean[c], patcher.S_corr[c]
    delta = S_corr - S_clean  # b pos slot d
    fixed = (S_corr[:, :, group] + alpha * (S_clean[:, :, group] - S_corr[:, :, group])).sum(2)  # b pos d
    live: list[Tensor] = []  # the group's output in this pass, once computed

    def capture(x: Tensor) -> None:
        live.append(x.sum(2) if x.dim() == 4 else x)

    def watched(x: Tensor, L: int, kind: Input) -> Tensor:
        k = lay.readable_slots(L, kind)
        if live and group.start < k:  # this input reads the group: give it the fixed value
            shift = fixed - live[0]
            x = x + (shift.unsqueeze(2) if x.dim() == 4 else shift)
        else:
            x = x.clone()
        rows = lay.rows(L, kind)

        def collect(grad: Tensor) -> None:
            g = grad if grad.dim() == 4 else grad.unsqueeze(2)  # b pos rows d
            dense[rows, :k] += weight * torch.einsum("bpsd,bprd->rs", delta[:, :, :k], g).to(torch.float64)

        x.register_hook(collect)
        return x

    def on_input(L: int, kind: Input) -> Hook | None:
        return None if kind == Input.RESID else (lambda x, hook: watched(x, L, kind))

    def on_output(L: int, kind: NodeKind) -> Hook | None:
        slot = lay.head_slot(L, 0) if kind == NodeKind.HEAD else lay.mlp_slot(L)
        return (lambda x, hook: capture(x)) if slot == group.start else None

    def on_resid(L: int) -> Hook | None:
        return (lambda x, hook: capture(x)) if L == 0 and group.start == 0 else None

    hooks = table.hooks(resid_pre=on_resid, inputs=on_input, outputs=on_output)
    with torch.enable_grad():
        final = table.run_to_final(
            patcher.model, patcher.data.clean[c], hooks, lambda x: watched(x, n, Input.RESID)
        )
        metric = patcher.readout.final_metric(final.unsqueeze(0), prompts=c)[0]
        metric.backward()


class EAPIGActivations(EAP):
    name = "eap-ig-activations"
    summary = "EAP-IG integrating over each sender group's activation (MIB's EAP-IG-activations; an estimate)"
    source = "Hanna, Pezzelle & Belinkov 2024; Mueller et al. 2025 (MIB)"
    positions = False  # plain graphs only
    options: ClassVar[tuple[Option, ...]] = (
        *EAP.options,
        Option(
            "ig_steps", int, DEFAULT_IG_STEPS, "integration steps per sender group", minimum=1, maximum=1000
        ),
    )

    def run(self, patcher: Patcher, ctx: RunContext, edges: int | None = None, threshold: float | None = None,
            batch_size: int | None = None, ig_steps: int = DEFAULT_IG_STEPS) -> Found:  # fmt: skip
        if edges is not None and threshold is not None:
            raise ConfigError(f"give either --edges N or --threshold X for --algorithm {self.name}, not both")
        from circuitdag.algorithms.attribution import default_attribution_edges

        if edges is None and threshold is None:
            edges = default_attribution_edges(patcher.graph.n_edges)
        t0 = time.perf_counter()
        att = attribute_activations(patcher, ig_steps, batch_size, ctx.progress)
        found = self.select(
            patcher, att, None if edges is None else min(edges, patcher.graph.n_edges), threshold, t0
        )
        found.record["ig_steps"] = ig_steps
        return found
