"""ACDC as a registered method (Conmy et al. 2023, "Towards Automated Circuit Discovery for
Mechanistic Interpretability"): ``acdc`` (the exact fast path, :func:`circuitdag.acdc_search.acdc_fast`)
and ``acdc-reference`` (one forward pass per edge, :func:`circuitdag.acdc_search.acdc_reference`),
identical circuits. Both checkpoint and resume (:mod:`circuitdag.checkpoint`).

``prefilter="eap-ig:N"`` (or ``eap:N``) first scores every edge by attribution
(:mod:`circuitdag.attribution`) and runs exact ACDC on the N highest ``|score|`` only: an
approximation of full ACDC (an edge outside the N is never tested), recorded in
circuit.json's ``prefilter``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from circuitdag.acdc_search import acdc_fast, acdc_reference
from circuitdag.algorithms.base import Algorithm, Found, Option, RunContext
from circuitdag.attribution import DEFAULT_IG_STEPS, METHODS, attribute, top_edges
from circuitdag.errors import ConfigError

if TYPE_CHECKING:
    from circuitdag.patching import Patcher

#: Edges kept by ``--prefilter eap-ig`` when no count is given (docs/real-models.md).
DEFAULT_PREFILTER_EDGES = 500


def parse_prefilter(spec: str | tuple[str, int] | None) -> tuple[str, int] | None:
    """``"eap-ig:500"`` -> ``("eap-ig", 500)``; ``"eap-ig"`` uses
    :data:`DEFAULT_PREFILTER_EDGES`; None stays None. Raises ConfigError."""
    if spec is None:
        return None
    if isinstance(spec, tuple):
        method, n = spec
    else:
        method, _, count = str(spec).partition(":")
        try:
            n = int(count) if count else DEFAULT_PREFILTER_EDGES
        except ValueError:
            raise ConfigError(f"--prefilter takes METHOD[:N] such as eap-ig:500, got {spec!r}") from None
    if method not in METHODS:
        raise ConfigError(f"--prefilter method must be one of {', '.join(METHODS)}, got {method!r}")
    if n < 1:
        raise ConfigError(f"--prefilter needs at least 1 edge, got {n}")
    return method, int(n)


class ACDC(Algorithm):
    name = "acdc"
    summary = "exact ACDC: speculative batches that recompute only what a candidate changes"
    source = "Conmy et al. 2023, Towards Automated Circuit Discovery for Mechanistic Interpretability"
    exact = True
    score_meaning = "metric change measured by ACDC when the edge was removed (null: never tested)"
    size_knob = "threshold"
    neurons = True
    checkpoints = True
    refusals: ClassVar[dict[str, str]] = {
        "edges": "--edges sets the size of an attribution circuit (--algorithm eap or eap-ig); ACDC uses "
                 "--threshold, and a prefilter's size goes in --prefilter eap-ig:N",
    }
    options: ClassVar[tuple[Option, ...]] = (
        Option("threshold", float, None, "keep an edge when removing it worsens the metric by at least this "
               "(metric units; default: the task's)", minimum=0),
        Option("prefilter", str, None, "METHOD[:N]: run ACDC on the N edges attribution ranks highest "
               f"(eap or eap-ig; N default {DEFAULT_PREFILTER_EDGES})"),
        Option("ig_steps", int, DEFAULT_IG_STEPS, "EAP-IG steps of the prefilter", minimum=1, maximum=1000),
        Option("k_max", int, None, "most speculative candidates per batch (default: what memory allows)", minimum=1),
    )
    reference: ClassVar[bool] = False

    def check(self, given: dict[str, Any]) -> dict[str, Any]:
        options = super().check(given)
        parse_prefilter(options.get("prefilter"))
        return options

    def run(self, patcher: Patcher, ctx: RunContext, threshold: float | None = None, prefilter: str | None = None,
            ig_steps: int = DEFAULT_IG_STEPS, k_max: int | None = None) -> Found:  # fmt: skip
        if threshold is None:
            raise ConfigError(f"--algorithm {self.name} needs a threshold (--threshold or --relative-threshold)")
        pre = parse_prefilter(prefilter)
        ck = ctx.checkpoint
        resuming = ctx.resume and ck is not None and ck.exists()
        start, pre_meta = None, None
        if pre is not None and not resuming:  # a resumed run takes its circuit from the checkpoint
            att = attribute(patcher, pre[0], ig_steps, progress=ctx.progress)
            start = top_edges(att.scores, n_edges=pre[1])
            pre_meta = {"method": pre[0], "edges": pre[1], "ig_steps": att.steps if pre[0] == "eap-ig" else None,
                        "edges_on_paths": int(patcher.graph.prune(start).sum()),
                        "attribution_seconds": round(att.seconds, 4)}  # fmt: skip
        info = dict(ctx.identity)
        info["prefilter"] = None if pre is None else f"{pre[0]}:{pre[1]}:{ig_steps}"
        info["neurons"] = sorted(int(L) for L in patcher.neurons)  # MLP layers split into neurons
        common: dict[str, Any] = {"progress": ctx.progress, "checkpoint": ck, "resume": ctx.resume, "run_info": info,
                  "checkpoint_every": ctx.checkpoint_every, "start": start,
                  "stats": {"prefilter": pre_meta} if pre_meta else None}  # fmt: skip
        if self.reference:
            state = acdc_reference(patcher, threshold, **common)
        else:
            state = acdc_fast(patcher, threshold, k_max=k_max, **common)
        if pre is not None:
            pre_meta = dict(state.stats.pop("prefilter", None) or pre_meta or {})
            pre_meta["kept"] = int(state.alive.sum())
            pre_meta["tested"] = int(np.isfinite(state.scores).sum())
        return Found(state.scores, state.alive, record={"threshold": threshold, "prefilter": pre_meta},
                     stats=state.stats)  # fmt: skip


class ACDCReference(ACDC):
    name = "acdc-reference"
    summary = "ACDC with one full forward pass per edge (the slow, obviously correct one; same circuit)"
    options = tuple(o for o in ACDC.options if o.name != "k_max")
    reference = True
