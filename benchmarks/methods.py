"""Circuit-discovery methods side by side: ACDC, EAP, EAP-IG, prefiltered ACDC,
EAP-IG-activations, information flow routes, Edge Pruning and UGS.

    .venv/bin/python benchmarks/methods.py                     # tracr + zoo tasks, one thread
    .venv/bin/python benchmarks/methods.py --quick             # smoke run: two tiny tasks, one repeat
    .venv/bin/python benchmarks/methods.py --tasks pronoun --repeats 5 --json runs/methods.json
    .venv/bin/python benchmarks/methods.py --smollm2 ioi --edge-percent 1   # SmolLM2-135M, one process per method

For every task (its default model, metric, ablation and threshold; one cached
:class:`~circuitdag.patching.Patcher` shared by all methods) it runs

* ``acdc``: full exact ACDC, fast path (``run_acdc(patcher, threshold)``);
* ``eap`` / ``eap-ig``: attribution scores (EAP-IG with ``--ig-steps``, default 5); the
  circuit is the top ``k`` edges by ``|score|``, ``k`` = the edges full ACDC kept, pruned
  to ``embed -> logits`` paths (``attribution_circuit(..., n_edges=k)``), so sizes compare;
* ``acdc-pre``: prefiltered ACDC, ``run_acdc(..., prefilter="eap-ig:N")`` with
  ``N = min(n_edges, --prefilter-factor * k)`` (default 3k; at least 1);
* ``eap-ig-act`` (EAP-IG-activations, ``--ig-steps``), ``ifr`` (information flow routes),
  ``edge-pruning`` and ``ugs`` (their defaults; ``--ugs-steps``): every one with
  ``edges=k`` through :func:`circuitdag.discovery.run_algorithm`. A method that refuses the
  task's graph (neuron nodes) gets a note instead of a row. The learned-mask methods
  (Edge Pruning, UGS) run once: their time is that run's (hundreds of passes, no warm-up
  effect to remove), not the best of the repeats;

and prints per method:

* ``edges``: edges in the circuit (after pruning to paths; ``sel``: picked before pruning);
  ``tested`` (ACDC rows): edges ACDC evaluated, i.e. with a score;
* ``faith``: :meth:`Circuit.faithfulness`, ``(m_corrupted - m_circuit) / (m_corrupted - m_full)``;
* ``CPR`` / ``CMD``: MIB's areas (:func:`circuitdag.mib.mib_curves`) of the method's own
  edge scores: CPR from the signed ranking, CMD from the ``|score|`` ranking. For the ACDC
  rows the scores are ACDC's (metric change when the edge was removed, positive = removing
  it hurts); edges ACDC never tested (NaN) rank after every tested edge (mib.ranking);
* ``jacc`` / ``rec``: edge overlap with full ACDC's circuit, ``|A & B| / |A | B|`` and
  ``|A & B| / |A|`` (A = ACDC's edges);
* ``P`` / ``R`` (tasks with ground truth): precision and recall of the circuit's edges
  against the ground-truth edges, the inert edges left out;
* ``AUC`` (tasks with ground truth): ROC AUC of ranking every edge by ``|score|`` (NaN
  last) against the ground-truth edges, the task's inert edges left out (as
  evaluate.confusion does): the rank-sum (Mann-Whitney) statistic with ties counted
  half, which is exactly the trapezoid area under the ROC through every threshold. The
  same definition for every method, ACDC included (on ACDC's scores). The ACDC row also
  shows ``sweepAUC``: evaluate.roc_sweep's AUC of ACDC rerun at 26 thresholds (off with
  ``--no-sweep`` and in ``--quick``);
* ``s``: wall seconds, best of ``--repeats`` after one warm-up, the methods alternated
  (rotated order) inside each repeat, one torch thread. Attribution rows include the
  attribution and the three exact metric passes; ``acdc-pre`` includes its attribution.

``--smollm2 TASK`` runs ``circuitdag discover --model smollm2-135m --task TASK`` once per
method in a fresh process (so that each process's peak memory is its method's), at
``--edge-percent`` of the graph's edges: ``eap-ig``, ``edge-pruning`` (its defaults) and
``acdc`` prefiltered to that many EAP-IG edges (the task's threshold; it keeps fewer), and
prints each circuit's size, faithfulness on the discovery prompts and on the task's
held-out prompts (circuitdag.holdout: for ``ioi`` the prompts of another seed), wall
seconds and peak memory as ``discover`` records them. CPR/CMD are not computed in this mode
(run ``circuitdag curve`` on a saved circuit.json). ``--ep-metric kl`` trains Edge Pruning on
KL (the paper's objective) while the others keep the task's metric; ``--rescore logit_diff
kl`` then measures every circuit's edge set exactly under each of those metrics, on the
discovery and the held-out prompts, so that circuits found with different metrics compare
on one scale; ``--keep DIR`` keeps each run's circuit.json in ``DIR/METHOD``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from circuitdag.attribution import DEFAULT_IG_STEPS
from circuitdag.circuit import Circuit
from circuitdag.discovery import attribution_circuit, run_acdc, run_algorithm
from circuitdag.errors import ConfigError
from circuitdag.evaluate import roc_sweep, task_truth
from circuitdag.mib import mib_curves
from circuitdag.patching import Patcher
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task

#: Tasks where full ACDC takes seconds on one CPU core (tracr programs, zoo models).
DEFAULT_TASKS = ("tracr-reverse", "tracr-proportion", "tracr-sort-unique", "tracr-hist", "tracr-length",
                 "tracr-pair-balance", "induction", "induction-compiled", "pronoun", "pronoun-opposite",
                 "an-neuron")  # fmt: skip
QUICK_TASKS = ("tracr-proportion", "tracr-sort-unique")
METHODS = ("acdc", "eap", "eap-ig", "acdc-pre", "eap-ig-act", "ifr", "edge-pruning", "ugs")
#: Run once (the warm-up run is the timed one): hundreds of passes each.
LEARNED = ("edge-pruning", "ugs")
#: Registry names of the rows that are not ACDC/EAP shortcuts.
REGISTERED = {"eap-ig-act": "eap-ig-activations", "ifr": "information-flow-routes", "edge-pruning": "edge-pruning",
              "ugs": "ugs"}  # fmt: skip


@dataclass
class MethodRow:
    method: str
    edges: int  # in the circuit, after pruning to paths
    selected: int  # picked before pruning (attribution: k; ACDC: kept)
    tested: int | None  # ACDC rows: edges ACDC evaluated (finite scores)
    faithfulness: float | None
    cpr: float
    cmd: float
    jaccard: float  # with full ACDC's edges
    recall: float  # of full ACDC's edges
    auc: float | None  # rank ROC AUC of |score| vs ground truth
    precision: float | None  # of the circuit's edges vs ground truth (inert left out)
    truth_recall: float | None
    sweep_auc: float | None  # ACDC row: evaluate.roc_sweep
    seconds: float  # best of the repeats
    stable: bool  # same edges in every repeat


@dataclass
class TaskResult:
    task: str
    model: str
    metric: str
    ablation: str
    threshold: float
    n_edges: int
    k: int  # edges full ACDC kept
    prefilter: int  # N of acdc-pre
    truth_edges: int | None
    inert_edges: int
    rows: list[MethodRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- measures
def rank_auc(scores: np.ndarray, truth: np.ndarray, counted: np.ndarray) -> float | None:
    """ROC AUC of ranking edges by ``|score|`` (NaN lowest) against the boolean ``truth``
    mask, over the ``counted`` edges only: the rank-sum statistic with average ranks for
    ties, equal to the trapezoid area under the ROC through every threshold (a tie is a
    diagonal step). None when the counted edges are all positive or all negative."""
    s = np.abs(np.asarray(scores, dtype=np.float64))
    s[np.isnan(s)] = -np.inf
    s, y = s[counted], truth[counted]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based average rank of each distinct value
    ranks = avg_rank[inverse.reshape(-1)]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def overlap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(Jaccard of edge sets a and b, recall of a's edges by b); 1.0 for two empty sets."""
    inter, union = int((a & b).sum()), int((a | b).sum())
    return (inter / union if union else 1.0), (inter / int(a.sum()) if a.any() else 1.0)


# ---------------------------------------------------------------------- one task
def runners(
    patcher: Patcher, threshold: float, k: int, n_pre: int, ig_steps: int, ugs_steps: int | None = None
) -> dict[str, Callable[[], Circuit]]:
    own: dict[str, dict[str, Any]] = {"eap-ig-act": {"ig_steps": ig_steps}, "ifr": {}, "edge-pruning": {},
                                      "ugs": {} if ugs_steps is None else {"steps": ugs_steps}}  # fmt: skip
    return {
        "acdc": lambda: run_acdc(patcher, threshold),
        "eap": lambda: attribution_circuit(patcher, "eap", n_edges=k),
        "eap-ig": lambda: attribution_circuit(patcher, "eap-ig", ig_steps, n_edges=k),
        "acdc-pre": lambda: run_acdc(patcher, threshold, prefilter=("eap-ig", n_pre), ig_steps=ig_steps),
        **{m: (lambda m=m: run_algorithm(patcher, REGISTERED[m], edges=k, **own[m])) for m in REGISTERED},
    }


def truth_overlap(circuit: np.ndarray, truth: np.ndarray, counted: np.ndarray) -> tuple[float | None, float | None]:
    """(precision, recall) of the circuit's edges against ``truth`` over the ``counted`` edges."""
    c, t = circuit & counted, truth & counted
    hit = int((c & t).sum())
    return (hit / int(c.sum()) if c.any() else None), (hit / int(t.sum()) if t.any() else None)


def timed(fn: Callable[[], Circuit]) -> tuple[Circuit, float]:
    t = time.perf_counter()
    c = fn()
    return c, time.perf_counter() - t


def bench_task(name: str, repeats: int, ig_steps: int, factor: float, sweep: bool, dtype: torch.dtype,
               methods: tuple[str, ...] = METHODS, ugs_steps: int | None = None,
               log: Callable[[str], None] = print) -> TaskResult:  # fmt: skip
    task = get_task(name)
    model = task.load_model(device="cpu", dtype=dtype)
    patcher, meta = prepare(model, task)
    graph, thr = patcher.graph, task.default_threshold
    truth, inert = task_truth(task, meta["ablation"])
    res = TaskResult(name, str(meta["model"]), str(meta["metric"]), str(meta["ablation"]), thr, graph.n_edges,
                     0, 0, None if truth is None else len(truth), len(inert))  # fmt: skip

    # Warm-up (one run of each), which also fixes k and N and gives the circuits judged.
    acdc, s_acdc = timed(lambda: run_acdc(patcher, thr))
    k = res.k = acdc.n_edges
    n_pre = res.prefilter = int(max(1, min(graph.n_edges, round(factor * k))))
    run = runners(patcher, thr, k, n_pre, ig_steps, ugs_steps)
    circuits, best = {"acdc": acdc}, {"acdc": s_acdc if repeats == 0 else float("inf")}
    for m in methods[1:]:
        try:
            circuits[m], best[m] = timed(run[m])
        except ConfigError as exc:  # the method does not take this graph (neuron nodes)
            res.notes.append(f"{m}: {exc}")
        if m not in LEARNED and m in circuits:
            best[m] = float("inf")
    ran = tuple(m for m in methods if m in circuits)
    stable = dict.fromkeys(ran, True)
    again = tuple(m for m in ran if m not in LEARNED)
    for r in range(repeats):
        for m in again[r % len(again) :] + again[: r % len(again)]:  # rotate the order
            c, s = timed(run[m])
            best[m] = min(best[m], s)
            stable[m] &= bool(np.array_equal(c.in_circuit, circuits[m].in_circuit))

    truth_mask = graph.edges_by_name(truth) if truth is not None else None
    counted = np.array([n not in inert for n in graph.edge_names])
    sweep_auc = roc_sweep(patcher, truth, inert, meta=meta)["auc"] if (sweep and truth is not None) else None
    if "eap" in circuits and "eap-ig" in circuits:
        eap, eap_ig = np.abs(circuits["eap"].scores).max(), np.abs(circuits["eap-ig"].scores).max()
        if eap <= 1e-6 * eap_ig:
            res.notes.append(f"EAP scores vanish (max |score| {eap:.1e} vs EAP-IG {eap_ig:.1e}): the {res.metric} "
                             "metric compares with the full model, so its gradient at the clean run is 0; EAP's top-k "
                             "is edge-table order")  # fmt: skip
    for m in ran:
        c = circuits[m]
        curves = mib_curves(patcher, c.scores)
        jac, rec = overlap(acdc.in_circuit, c.in_circuit)
        selected = c.meta.get("edges_selected", c.n_edges)
        prec, trec = truth_overlap(c.in_circuit, truth_mask, counted) if truth_mask is not None else (None, None)
        res.rows.append(MethodRow(
            m, c.n_edges, int(selected), int(np.isfinite(c.scores).sum()) if m.startswith("acdc") else None,
            c.faithfulness(), curves["signed"].cpr, curves["absolute"].cmd, jac, rec,
            rank_auc(c.scores, truth_mask, counted) if truth_mask is not None else None, prec, trec,
            sweep_auc if m == "acdc" else None, best[m], stable[m],
        ))  # fmt: skip
    return res


# ---------------------------------------------------------------------- printing
def _f(x: float | None, spec: str = ".3f", width: int = 6) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:>{width}{spec}}"


HEADER = (f"{'method':<12} {'edges':>5} {'sel':>4} {'tested':>6} {'faith':>6} {'CPR':>6} {'CMD':>6} {'jacc':>5} "
          f"{'rec':>5} {'AUC':>6} {'P':>5} {'R':>5} {'sweepAUC':>8} {'s':>8}")  # fmt: skip


def format_task(t: TaskResult) -> str:
    truth = (
        "no ground truth"
        if t.truth_edges is None
        else f"ground truth {t.truth_edges} edges, {t.inert_edges} inert"
    )
    title = (f"== {t.task}  model={t.model} metric={t.metric} ablation={t.ablation} threshold={t.threshold:g}  "
             f"edges={t.n_edges}  k={t.k}  prefilter N={t.prefilter}  {truth}")  # fmt: skip
    lines = [title, HEADER]
    for r in t.rows:
        lines.append(f"{r.method:<12} {r.edges:>5} {r.selected:>4} {_f(r.tested, 'd')} {_f(r.faithfulness)} {_f(r.cpr)} "
                     f"{_f(r.cmd)} {_f(r.jaccard, '.2f', 5)} {_f(r.recall, '.2f', 5)} {_f(r.auc)} "
                     f"{_f(r.precision, '.2f', 5)} {_f(r.truth_recall, '.2f', 5)} {_f(r.sweep_auc, '.3f', 8)} "
                     f"{r.seconds:>8.3f}" + ("" if r.stable else "  (edges differ between repeats)"))  # fmt: skip
    lines += [f"note: {n}" for n in t.notes]
    return "\n".join(lines)


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def format_summary(results: list[TaskResult]) -> str:
    """Per method: means over the tasks it ran on (AUC, P, R over the tasks with ground
    truth), total seconds and the time relative to full ACDC on the same tasks; then
    faithfulness and AUC per task."""
    lines = [f"== summary over {len(results)} tasks (means; AUC, P, R over tasks with ground truth)",
             (f"{'method':<12} {'tasks':>5} {'faith':>6} {'|1-f|':>6} {'CPR':>6} {'CMD':>6} {'jacc':>5} {'rec':>5} "
              f"{'AUC':>6} {'P':>5} {'R':>5} {'total s':>8} {'vs acdc':>7}")]  # fmt: skip
    methods = [m for m in METHODS if any(r.method == m for t in results for r in t.rows)]
    by = {m: [(t, r) for t in results for r in t.rows if r.method == m] for m in methods}
    for m, pairs in by.items():
        rows = [r for _, r in pairs]
        tot = sum(r.seconds for r in rows)
        t_acdc = sum(r.seconds for t, _ in pairs for r in t.rows if r.method == "acdc")
        dev = _mean([None if r.faithfulness is None else abs(1 - r.faithfulness) for r in rows])
        lines.append(f"{m:<12} {len(rows):>5} {_f(_mean([r.faithfulness for r in rows]))} {_f(dev)} "
                     f"{_f(_mean([r.cpr for r in rows]))} {_f(_mean([r.cmd for r in rows]))} "
                     f"{_f(_mean([r.jaccard for r in rows]), '.2f', 5)} {_f(_mean([r.recall for r in rows]), '.2f', 5)} "
                     f"{_f(_mean([r.auc for r in rows]))} {_f(_mean([r.precision for r in rows]), '.2f', 5)} "
                     f"{_f(_mean([r.truth_recall for r in rows]), '.2f', 5)} "
                     f"{tot:>8.2f} {tot / t_acdc if t_acdc else float('nan'):>6.2f}x")  # fmt: skip
    lines += ["", f"{'faithfulness / AUC':<20} " + " ".join(f"{m:>15}" for m in methods)]
    for t in results:
        got = {r.method: f"{_f(r.faithfulness)} / {_f(r.auc)}" for r in t.rows}
        lines.append(f"{t.task:<20} " + " ".join(f"{got.get(m, '-'):>15}" for m in methods))
    return "\n".join(lines)


# ---------------------------------------------------------------------- SmolLM2
#: ``--smollm2`` methods: the ``circuitdag discover`` arguments of each (N: the edge count).
SMOL_METHODS = {
    "eap-ig": lambda n: ["--algorithm", "eap-ig", "--edges", str(n)],
    "acdc-pre": lambda n: ["--algorithm", "acdc", "--prefilter", f"eap-ig:{n}"],
    "edge-pruning": lambda n: ["--algorithm", "edge-pruning", "--edges", str(n)],
}


def smollm2(task: str, percent: float, methods: tuple[str, ...], threads: int, out_json: str | None,
            ep_options: list[str] | None = None, n_prompts: int | None = None, keep: str | None = None,
            ep_metric: str | None = None, rescore_metrics: tuple[str, ...] = ()) -> int:
    """One ``circuitdag discover`` process per method on SmolLM2-135M (module docstring)."""
    import gc
    import subprocess
    import tempfile

    from circuitdag.graph import Graph
    from circuitdag.models import load_model, spec_of

    print(f"date={datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} SmolLM2-135M task={task} edges={percent:g}% "
          f"threads={threads}", flush=True)  # fmt: skip
    model = load_model("smollm2-135m")
    n_edges = Graph(spec_of(model)).n_edges
    del model  # each method's process loads its own; this one stays small
    gc.collect()
    n = max(1, round(percent / 100 * n_edges))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            out = Path(keep or tmp) / m
            cmd = [sys.executable, "-m", "circuitdag.cli", "discover", "--model", "smollm2-135m", "--task", task,
                   *SMOL_METHODS[m](n), "--out", str(out), "-q", "--no-svg", "--threads", str(threads)]  # fmt: skip
            if m == "edge-pruning":
                cmd += [a for o in ep_options or [] for a in ("--option", o)]
                cmd += ["--metric", ep_metric] if ep_metric else []
            if n_prompts is not None:
                cmd += ["--n-prompts", str(n_prompts)]
            print("$ " + " ".join(cmd[2:]), flush=True)
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                print(f"{m}: failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
                continue
            doc = json.loads((out / "circuit.json").read_text())
            kept = sum(e["in_circuit"] for e in doc["edges"])
            gap = doc["metric_corrupted"] - doc["metric_full"]
            faith = (doc["metric_corrupted"] - doc["metric_circuit"]) / gap if gap else None
            held = (doc.get("heldout") or {}).get("faithfulness")
            st = doc["stats"]
            row = {"method": m, "edges": kept, "requested": n, "faithfulness": faith, "heldout_faithfulness": held,
                   "heldout_how": (doc.get("heldout") or {}).get("how"), "seconds": st.get("seconds"),
                   "process_seconds": round(wall, 1), "peak_memory_gb": st.get("peak_memory_gb")}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
        runs = {r["method"]: Path(keep or tmp) / r["method"] for r in rows}
        rescored = [r for metric_ in rescore_metrics for r in rescore(task, runs, metric_, n_prompts)]
    print(f"\n{'method':<13} {'edges':>6} {'faith':>7} {'held-out':>8} {'s':>8} {'peak GB':>8}")
    for r in rows:
        print(f"{r['method']:<13} {r['edges']:>6} {_f(r['faithfulness'], '.3f', 7)} "
              f"{_f(r['heldout_faithfulness'], '.3f', 8)} {r['seconds']:>8.1f} {_f(r['peak_memory_gb'], '.2f', 8)}")  # fmt: skip
    if rescored:
        print(f"\n{'method':<13} {'metric':<11} {'edges':>6} {'faith':>7} {'held-out':>8}")
        for r in rescored:
            print(f"{r['method']:<13} {r['metric']:<11} {r['edges']:>6} {_f(r['faithfulness'], '.3f', 7)} "
                  f"{_f(r['heldout_faithfulness'], '.3f', 8)}")  # fmt: skip
    if out_json:
        Path(out_json).write_text(json.dumps({"task": task, "percent": percent, "edges": n, "rows": rows,
                                              "rescored": rescored}, indent=1))  # fmt: skip
    return 0


def rescore(task: str, runs: dict[str, Path], metric: str, n_prompts: int | None) -> list[dict]:
    """Every run's edge set measured exactly under ``metric`` on its discovery prompts (the
    task's, seed 0) and on the held-out ones (circuitdag.holdout), so that circuits found
    with different metrics compare on one scale. One row per run."""
    from circuitdag.holdout import heldout_data, metrics_on, patcher_on
    from circuitdag.models import load_model

    t = get_task(task)
    model = load_model("smollm2-135m")
    patcher, _ = prepare(model, t, metric=metric, n_prompts=n_prompts)
    held = heldout_data(t, model, patcher.data, seed=0, n_prompts=n_prompts)[1].data
    held_patcher = patcher_on(patcher, held) if held is not None else None
    rows = []
    for name, path in runs.items():
        doc = json.loads((path / "circuit.json").read_text())
        alive = np.array([e["in_circuit"] for e in doc["edges"]], dtype=bool)
        row = {"method": name, "metric": metric, "edges": int(alive.sum()),
               "faithfulness": metrics_on(patcher, alive)["faithfulness"],
               "heldout_faithfulness": metrics_on(held_patcher, alive)["faithfulness"] if held_patcher else None}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", help=f"tasks to run (default: {' '.join(DEFAULT_TASKS)})")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed repeats after the warm-up (default 3; --quick 1)"
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {' '.join(QUICK_TASKS)} unless --tasks, 1 repeat, no threshold sweep",
    )
    ap.add_argument(
        "--ig-steps", type=int, default=DEFAULT_IG_STEPS, help="EAP-IG steps (also for the prefilter)"
    )
    ap.add_argument(
        "--prefilter-factor",
        type=float,
        default=3.0,
        help="prefiltered ACDC keeps N = factor x (edges full ACDC kept) EAP-IG edges",
    )
    ap.add_argument("--no-sweep", action="store_true", help="skip the ACDC threshold-sweep AUC")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="methods to run (acdc always; default: all)")
    ap.add_argument("--ugs-steps", type=int, default=None, help="UGS optimisation steps (default: UGS's default)")
    ap.add_argument("--smollm2", metavar="TASK", help="run TASK on SmolLM2-135M instead (module docstring)")
    ap.add_argument("--edge-percent", type=float, default=1.0, help="--smollm2: circuit size, %% of the edges")
    ap.add_argument("--smollm2-methods", nargs="+", default=list(SMOL_METHODS), choices=list(SMOL_METHODS))
    ap.add_argument("--n-prompts", type=int, default=None, help="--smollm2: prompts per run (default: the task's)")
    ap.add_argument("--ep-option", action="append", default=[], metavar="NAME=VALUE",
                    help="--smollm2: an Edge Pruning option other than its default (repeatable)")
    ap.add_argument("--keep", metavar="DIR", help="--smollm2: keep each method's run (circuit.json) in DIR/METHOD")
    ap.add_argument("--ep-metric", help="--smollm2: Edge Pruning's metric (default: the task's; kl is the paper's)")
    ap.add_argument("--rescore", nargs="+", default=[], metavar="METRIC",
                    help="--smollm2: also measure every circuit under these metrics (discovery and held-out prompts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smollm2:
        return smollm2(args.smollm2, args.edge_percent, tuple(args.smollm2_methods), args.threads, args.json,
                       args.ep_option, args.n_prompts, args.keep, args.ep_metric, tuple(args.rescore))
    methods = ("acdc", *(m for m in METHODS[1:] if args.methods is None or m in args.methods))
    tasks = args.tasks or (QUICK_TASKS if args.quick else DEFAULT_TASKS)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    sweep = not (args.no_sweep or args.quick)
    dtype = getattr(torch, args.dtype)

    print(f"date={datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} torch={torch.__version__} "
          f"python={platform.python_version()} threads={torch.get_num_threads()} dtype={args.dtype} "
          f"repeats={repeats} ig_steps={args.ig_steps} prefilter N=min(edges, {args.prefilter_factor:g}k) "
          f"sweep={'yes' if sweep else 'no'}", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    results = []
    for name in tasks:
        res = bench_task(name, repeats, args.ig_steps, args.prefilter_factor, sweep, dtype, methods, args.ugs_steps)
        results.append(res)
        print(format_task(res) + "\n", flush=True)
    if results:
        print(format_summary(results))
    print(f"\nbenchmark wall time {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": {"threads": torch.get_num_threads(), "dtype": args.dtype, "repeats": repeats,
                                    "ig_steps": args.ig_steps, "prefilter_factor": args.prefilter_factor,
                                    "sweep": sweep, "methods": methods, "ugs_steps": args.ugs_steps},
                       "tasks": [asdict(r) for r in results]}, f, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
