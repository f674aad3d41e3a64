"""EAP and EAP-IG as registered methods: every edge scored at once by gradient
attribution (:mod:`circuitdag.attribution`, where the exact semantics and the papers are),
the circuit being the top edges by ``|score|`` pruned to ``embed -> logits`` paths.

* ``eap``: Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated Circuit
  Discovery";
* ``eap-ig``: Hanna, Pezzelle & Belinkov 2024, "Have Faith in Faithfulness" (the "inputs"
  variant MIB runs).

Size: ``edges`` (the N largest ``|score|``) or ``threshold`` (every ``|score| >=``
threshold, metric units; or a relative threshold); neither: 1% of the graph's edges, at
least 10 (a point of MIB's grid).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from circuitdag.algorithms.base import Algorithm, Found, Option, RunContext
from circuitdag.attribution import DEFAULT_IG_STEPS, Attribution, attribute, top_edges
from circuitdag.errors import ConfigError

if TYPE_CHECKING:
    from circuitdag.patching import Patcher


def default_attribution_edges(n_edges: int) -> int:
    """Edges an attribution circuit keeps without ``edges`` or ``threshold``: 1% of the
    graph (a point of MIB's grid), at least 10."""
    return min(n_edges, max(10, round(0.01 * n_edges)))


class EAP(Algorithm):
    name = "eap"
    summary = "edge attribution patching: one gradient at the clean run scores every edge (an estimate)"
    source = "Syed, Rager & Conmy 2023, Attribution Patching Outperforms Automated Circuit Discovery"
    score_meaning = "attribution estimate of the metric change when the edge alone is removed"
    size_knob = "edges"
    refusals: ClassVar[dict[str, str]] = {
        "prefilter": "--prefilter goes with --algorithm acdc; an attribution circuit is already a prefilter",
    }
    options: ClassVar[tuple[Option, ...]] = (
        Option("edges", int, None, "keep the N edges with the largest |score| (default 1% of the graph)", minimum=0),
        Option("threshold", float, None, "keep every edge with |score| >= this (metric units)", minimum=0),
        Option("batch_size", int, None, "prompts per forward/backward pass (default: what memory allows)", minimum=1),
    )

    def check(self, given: dict[str, Any]) -> dict[str, Any]:
        options = super().check(given)
        if options["edges"] is not None and options["threshold"] is not None:
            raise ConfigError(f"give either --edges N or --threshold X for --algorithm {self.name}, not both")
        return options

    def run(self, patcher: Patcher, ctx: RunContext, edges: int | None = None, threshold: float | None = None,
            batch_size: int | None = None, ig_steps: int = 1) -> Found:  # fmt: skip
        if edges is not None and threshold is not None:
            raise ConfigError(f"give either --edges N or --threshold X for --algorithm {self.name}, not both")
        if edges is None and threshold is None:
            edges = default_attribution_edges(patcher.graph.n_edges)
        edges = None if edges is None else min(edges, patcher.graph.n_edges)
        t0 = time.perf_counter()
        return self.select(patcher, attribute(patcher, self.name, ig_steps, batch_size, ctx.progress), edges,
                           threshold, t0)  # fmt: skip

    def select(self, patcher: Patcher, att: Attribution, edges: int | None, threshold: float | None,
               t0: float | None = None) -> Found:  # fmt: skip
        """The circuit of scores ``att`` (:func:`~circuitdag.attribution.attribute`): the top
        ``edges`` by ``|score|`` or every ``|score| >= threshold``, pruned to paths."""
        keep = top_edges(att.scores, edges, threshold)
        seconds = att.seconds if t0 is None else time.perf_counter() - t0
        return Found(
            att.scores.astype(np.float64),
            patcher.graph.prune(keep),
            record={"threshold": threshold, "edges_requested": edges, "edges_selected": int(keep.sum()),
                    "ig_steps": att.steps if att.method == "eap-ig" else None},
            stats={"attribution_seconds": round(att.seconds, 4), "attribution_passes": att.passes,
                   "batch_size": att.batch_size, "seconds": round(seconds, 4)},
        )


class EAPIG(EAP):
    name = "eap-ig"
    summary = "EAP with integrated gradients over the input embedding (MIB's EAP-IG-inputs; an estimate)"
    source = "Hanna, Pezzelle & Belinkov 2024, Have Faith in Faithfulness"
    options = (*EAP.options, Option("ig_steps", int, DEFAULT_IG_STEPS, "integrated-gradient steps", minimum=1,
                                    maximum=1000))  # fmt: skip

    def run(self, patcher: Patcher, ctx: RunContext, edges: int | None = None, threshold: float | None = None,
            batch_size: int | None = None, ig_steps: int = DEFAULT_IG_STEPS) -> Found:  # fmt: skip
        return super().run(patcher, ctx, edges, threshold, batch_size, ig_steps)
