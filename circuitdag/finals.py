"""The final residual streams of circuits that a :class:`~circuitdag.patching.Patcher`
evaluated, kept so that the run record, the held-out check and the trust checks, which ask
for the same circuits, pay for each circuit once (issue 26, the trust path).

:class:`Finals` keeps the full model's entry (the clean run, no pass) and the empty
circuit's (read off the cached runs where the residual stream allows, :meth:`Finals.empty`)
always, and the last :data:`FINALS_KEPT` other circuits. A circuit not kept is evaluated
on its own nodes where the patcher's node pass applies (plain graphs whose component
kernels reproduce the model: :mod:`circuitdag.node_pass`), else with one full pass with
sparse sums (``Patcher.sparse_final``); both are tested equal to the reference pass. On
SmolLM2-135M (100 prompts, the 642-edge EAP-IG circuit of ``pronoun``, one thread) the node
pass with its one-off kernel check (8 prompts) costs 3.3 s where the sparse pass cost 5.5 s
(benchmarks/fixed_costs.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.errors import ConfigError

#: How many circuits' final residual streams a :class:`Finals` keeps besides the full
#: model's and the empty circuit's.
FINALS_KEPT = 4

__all__ = ["FINALS_KEPT", "Finals"]


class Finals:
    """``[final residual stream (batch pos d_model), metric or None]`` per circuit of one
    patcher (module docstring). ``patcher`` is a :class:`~circuitdag.patching.Patcher`
    (not imported: it owns this)."""

    def __init__(self, patcher: Any) -> None:
        self.p = patcher
        self.kept: OrderedDict[bytes, list[Any]] = OrderedDict()
        #: Wall seconds of the last circuit evaluated here (None before the first).
        self.pass_seconds: float | None = None

    def entry(self, alive: np.ndarray) -> list[Any]:
        """The entry of circuit ``alive`` (one bool per edge), evaluated if not kept. Do not
        modify the tensor. Raises :class:`ConfigError` for a mask of the wrong shape."""
        p = self.p
        alive = np.asarray(alive, dtype=bool)
        if alive.shape != (p.graph.n_edges,):
            raise ConfigError(f"a circuit is one bool per edge ({p.graph.n_edges}), got shape {alive.shape}")
        # the full model and the empty circuit are kept always
        key = b"all" if alive.all() else b"m" + np.packbits(alive).tobytes() if alive.any() else b"none"
        entry = self.kept.get(key)
        if entry is not None:
            self.kept.move_to_end(key)
            return entry
        empty = self.empty() if key == b"none" else None
        if key == b"all":  # the full model is the clean run: no pass needed
            entry = [p.resid_final, None]
        elif empty is not None:
            entry = [empty, None]
        else:
            t0 = time.perf_counter()
            fast = p.node_pass()
            if fast is not None:
                entry = [fast.final(alive), None]
                fast.release()  # a run record asks for one or two circuits: keep no slot buffers
                p.n_forward += 1
            else:
                entry = [p.sparse_final(alive), None]
            self.pass_seconds = time.perf_counter() - t0
        self.kept[key] = entry
        old = [k for k in self.kept if k not in (b"all", b"none")]
        for k in old[: max(0, len(old) - FINALS_KEPT)]:
            del self.kept[k]
        return entry

    @torch.no_grad()
    def empty(self) -> Float[Tensor, "batch pos d_model"] | None:
        """The empty circuit's final residual stream without a pass, on plain graphs in
        float32/float64. With every edge absent the logits read ``resid - sum_s (S_now[s] -
        S_corr[s])``; the residual stream is the senders' outputs plus a part no sender
        writes (the attention output biases), the same in every pass, so this is
        ``resid_final - sum_s D_clean[s]`` of the cached runs. Checked on the clean run: None
        (then the pass runs) unless that unwritten part is the same at every token, up to
        the rounding of summing the slots. Tested equal to the pass."""
        p = self.p
        if p.positional or p.dtype not in (torch.float32, torch.float64):
            return None
        S = p.S_clean
        rest = p.resid_final - S.sum(2)  # batch pos d_model
        lo, hi = torch.aminmax(S)  # max |S| without an |S|-sized copy (0.7 GB on SmolLM2)
        tol = 4 * S.shape[2] * torch.finfo(p.dtype).eps * max(float(hi), -float(lo)) + 1e-30
        if float((rest - rest[:1, :1]).abs().amax()) > tol:
            return None
        return p.resid_final - p.D_clean.sum(2)
