"""How far to trust a circuit: the checks ``discover`` and ``evaluate`` add to a run record.

:func:`assess` puts into ``circuit.meta`` (so into circuit.json), each when asked for:

* ``heldout`` -- the exact metric values and faithfulness on the held-out prompts
  (:mod:`circuitdag.holdout`), or why there are none;
* ``verify`` -- ``--verify-top N``: exact single-edge effects beside the estimates
  (:mod:`circuitdag.verify`);
* ``tests`` -- the hypothesis tests (:mod:`circuitdag.hypothesis`);
* ``bootstrap`` -- ``--bootstrap B`` (:mod:`circuitdag.bootstrap`).

:func:`trust_summary` is the part of ``discover``'s summary line these add.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from circuitdag.circuit import Circuit

if TYPE_CHECKING:
    from circuitdag.algorithms import Algorithm
    from circuitdag.holdout import Heldout
    from circuitdag.patching import Patcher

log = logging.getLogger("circuitdag")


def rerun_options(method: Algorithm, circuit: Circuit, options: dict[str, Any]) -> dict[str, Any]:
    """The options that rerun ``method`` as it made ``circuit``: ``options`` checked, with
    the threshold the run resolved (a relative threshold or the task's default, in metric
    units) when the method has one."""
    opts = method.check({k: v for k, v in options.items() if v is not None})
    if "threshold" in opts and opts["threshold"] is None and circuit.meta.get("threshold") is not None:
        opts["threshold"] = float(circuit.meta["threshold"])
    return opts


def assess(
    circuit: Circuit,
    patcher: Patcher,
    *,
    heldout: Heldout | None = None,
    heldout_patcher: Patcher | None = None,
    verify_top: int | None = None,
    tests: tuple[str, ...] = (),
    test_options: dict[str, Any] | None = None,
    bootstrap: int | None = None,
    method: Algorithm | None = None,
    options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = False,
    storage: str | None = None,
    study: str | None = None,
    journal: str | Path | None = None,
    resume: bool = False,
) -> Circuit:
    """Add the checks asked for to ``circuit.meta`` (module docstring) and return the
    circuit. ``patcher``: the discovery run; ``heldout``/``heldout_patcher``: the held-out
    prompts and a patcher on them; ``method``/``options``: what made the circuit (for
    ``bootstrap`` reruns); ``storage`` (an Optuna storage URL) and ``study``: run the
    resamples as trials that ``sweep-worker`` processes share
    (:mod:`circuitdag.sweep.resamples`); else ``journal``: a file that keeps each finished
    resample, read back with ``resume`` (:mod:`circuitdag.bootstrap_journal`)."""
    from circuitdag.holdout import metrics_on

    meta, alive = circuit.meta, circuit.in_circuit
    if heldout is not None:
        meta["heldout"] = {"how": heldout.how, **({"fraction": heldout.fraction} if heldout.fraction else {})}
        if heldout_patcher is not None:
            meta["heldout"].update(metrics_on(heldout_patcher, alive))
        else:
            meta["heldout"]["reason"] = heldout.reason
    if verify_top:
        import numpy as np

        from circuitdag._options import cap
        from circuitdag.verify import verify_top as verify

        scored = int(np.isfinite(np.asarray(circuit.scores, dtype=np.float64)).sum())
        verify_top = cap("--verify-top", verify_top, max(scored, 1), "the edges the method scored")
        meta["verify"] = verify(patcher, circuit.scores, alive, verify_top, progress=progress)
    if tests:
        from circuitdag.hypothesis import run_tests

        meta["tests"] = run_tests(patcher, alive, tests, seed=seed, progress=progress, **(test_options or {}))
    if bootstrap:
        from circuitdag.bootstrap import bootstrap as run_bootstrap

        if method is None:
            raise ValueError("bootstrap needs the method that made the circuit")
        opts = rerun_options(method, circuit, options or {})
        if storage is not None:
            from circuitdag.sweep.resamples import shared_bootstrap

            meta["bootstrap"] = shared_bootstrap(patcher, heldout_patcher, method, opts, bootstrap, alive, meta,
                                                 storage, study, seed=seed, progress=progress)  # fmt: skip
        else:
            from circuitdag.bootstrap import additive
            from circuitdag.bootstrap_journal import open_journal

            jr = None if journal is None else open_journal(journal, meta, method.name, opts, seed, alive,
                                                           additive(method, patcher), resume)  # fmt: skip
            meta["bootstrap"] = run_bootstrap(patcher, method, opts, bootstrap, alive, heldout_patcher, seed=seed,
                                              progress=progress, journal=jr)  # fmt: skip
    return circuit


def _ci(ci: list[float | None] | None) -> str:
    return "n/a" if not ci or ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def trust_summary(meta: dict[str, Any]) -> str:
    """``; held-out faithfulness ...; bootstrap ...; verify ...; tests ...`` for the summary
    line (empty when the record has none of them)."""
    parts = []
    h = meta.get("heldout")
    if h:
        if h.get("faithfulness") is not None:
            ci = (meta.get("bootstrap") or {}).get("circuit_faithfulness_ci", {}).get("heldout")
            parts.append(f"held-out faithfulness {h['faithfulness']:.3f}" + (f" {_ci(ci)}" if ci else "")
                         + f" ({h['n_prompts']} prompts, {h['how']})")  # fmt: skip
        else:
            parts.append(f"no held-out prompts ({h.get('reason') or h['how']})")
    b = meta.get("bootstrap")
    if b:
        f = b["faithfulness"]
        parts.append(f"bootstrap x{b['resamples']}: discovery f {_ci(b['circuit_faithfulness_ci']['discovery'])}, "
                     f"reruns' f {_ci(f['discovery']['ci'])}"
                     + (f" (held-out {_ci(f['heldout']['ci'])})" if "heldout" in f else "")
                     + f", edge Jaccard {b['stability']['edge_jaccard']:.2f}, node Jaccard "
                     f"{b['stability']['node_jaccard']:.2f}")  # fmt: skip
    v = meta.get("verify")
    if v:
        rho = v.get("spearman")
        parts.append(f"verify-top {v['n']}: Spearman {'n/a' if rho is None else f'{rho:.2f}'}, "
                     f"{v['n_off']}/{v['n_checked']} off by >2x")  # fmt: skip
    t = meta.get("tests")
    if t:
        parts.append("tests " + ", ".join(_test(k, r) for k, r in t.items()))
    return "".join("; " + p for p in parts)


def _test(name: str, r: dict[str, Any]) -> str:
    """``sufficiency p=0.0476 (its floor: 20 random circuits)``: a test's p-value, whether it
    is as small as its permutations or random circuits allow, and whether the circuit fails."""
    if "p_value" not in r:
        return f"{name} skipped"
    d, floor = r.get("detail") or {}, (r.get("detail") or {}).get("p_floor")
    at_floor = floor is not None and r["p_value"] <= floor * (1 + 1e-9)
    what = f"{d.get('random_circuits')} random circuits" if "random_circuits" in d else f"{d.get('permutations')} permutations"
    return (f"{name} p={r['p_value']:.3g}" + (f" (its floor: {what})" if at_floor else "")
            + ("" if r["passed"] else " (fails)"))  # fmt: skip


__all__ = ["assess", "rerun_options", "trust_summary"]
