"""circuitdag vs auto-circuit 1.0.1: exact ACDC on the same tracr models, side by side.

    bash scripts/setup_auto_circuit.sh            # once: .venv-autocircuit (auto-circuit from PyPI)
    .venv/bin/python benchmarks/vs_auto_circuit.py                  # the table, ~ a few minutes
    .venv/bin/python benchmarks/vs_auto_circuit.py --only reverse --reps 3

Every case runs auto-circuit's own ACDC (``acdc_prune_scores`` with one tau) and
circuitdag's ``acdc_fast`` and ``acdc_reference`` on

* the same model: circuitdag's compiled tracr weights (circuitdag/models/zoo/tracr), loaded
  on the auto-circuit side into a TransformerLens 2.x ``HookedTransformer`` as auto-circuit's
  ``get_tracr_model`` builds one (the worker checks both compute the same outputs);
* the same prompts and corrupted prompts: circuitdag's tracr task data (its seeded
  counterfactual pairs, N prompts), written as a pre-tokenized JSON dataset in the
  format of auto-circuit's ``load_datasets_from_json`` and read by both sides from that file;
* the same metric on every non-BOS position (auto-circuit's ``not_first_seq``): KL(clean ||
  circuit) on reverse (auto-circuit's ``kl_div``, circuitdag's ``kl``), mean squared error
  on xproportion (auto-circuit's ``mse``; circuitdag gets the same function as a
  callable metric, its tracr default ``l2`` is a different metric);
* the same rule: resample ablation, remove an edge when metric(G - e) - metric(G) < tau,
  tau = 1e-3 on every row (circuitdag's tracr default; without positions every tau from
  1e-5 to 0.1 gives the same circuits here: 2 edges on reverse, 3 on xproportion).

The rows are those of issue 14's table: no positions with 200 prompts; position-aware
with the batch sizes of auto-circuit's own tracr token-circuit tasks (11 prompts for
reverse, 64 for xproportion; its ACDC uses the first batch only) and with 200.

Each side runs in its own process and virtual environment (auto-circuit pins
TransformerLens 2.x): ``.venv-autocircuit/bin/python benchmarks/_auto_circuit_worker.py``
and this file with ``--worker`` under circuitdag's python. Both use one torch thread
(and OMP/MKL_NUM_THREADS=1). Per case each worker builds its model and graph once
(untimed) and runs every algorithm once to warm up; then the three algorithms run
interleaved (the order rotates every round) ``--reps`` times and the best, median and
worst seconds are reported (``--ref-reps`` runs the slow reference fewer times). What is timed: auto-circuit's ``acdc_prune_scores`` call
(which caches its clean and corrupted activations itself); for circuitdag the
``Patcher`` (its cached clean and corrupted runs) plus the search, and separately the
search alone. Graph/patchable-model construction is untimed on both sides.

Edge sets: auto-circuit does not prune its result to input->output paths, circuitdag
does; both are compared after the same pruning. Position-aware, circuitdag's graph is
larger (a K/V edge per (key position, query position) pair, logits reading only the
answer positions); its circuit is projected onto auto-circuit's per-position edges (an
auto-circuit edge at position p is present when any circuitdag edge from the sender at p
into that input is). auto-circuit visits the edges of one layer in the order of a Python
set of its Edge objects; PYTHONHASHSEED=0 makes that order, and so its result, the same
in every run.

The table is printed and written to benchmarks/results/vs_auto_circuit.txt (``--out``);
``--json`` also writes every timing. The exit status is 1 when an edge set differs (auto-
circuit vs circuitdag, fast vs reference, or between runs) or the two models' outputs do.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
AC_VENV = ROOT / ".venv-autocircuit"
AC_WORKER = ROOT / "benchmarks" / "_auto_circuit_worker.py"
ALGOS = ("auto-circuit", "fast", "reference")


@dataclass(frozen=True)
class Case:
    label: str
    task: str  # circuitdag task name
    metric: str  # "kl" | "mse"
    n_prompts: int
    positions: bool
    tau: tuple[int, int]  # base, exponent: tau = base * 10**exponent (auto-circuit's grid)

    @property
    def threshold(self) -> float:
        return self.tau[0] * 10 ** self.tau[1]


#: The rows of issue 14's table: plain with 200 prompts; position-aware with the batch sizes
#: of auto-circuit's own tracr token-circuit tasks (11 and 64 prompts) and with 200.
CASES = (
    Case("tracr reverse, no positions, KL", "tracr-reverse", "kl", 200, False, (1, -3)),
    Case("tracr xproportion, no positions, MSE", "tracr-proportion", "mse", 200, False, (1, -3)),
    Case("reverse, position-aware, KL", "tracr-reverse", "kl", 11, True, (1, -3)),
    Case("xproportion, position-aware, MSE", "tracr-proportion", "mse", 64, True, (1, -3)),
    Case("reverse, position-aware, KL", "tracr-reverse", "kl", 200, True, (1, -3)),
    Case("xproportion, position-aware, MSE", "tracr-proportion", "mse", 200, True, (1, -3)),
)


# ---------------------------------------------------------------------------------- data
def write_dataset(case: Case, path: Path, seed: int = 0) -> dict[str, Any]:
    """circuitdag's tracr task data for ``case`` as auto-circuit's pre-tokenized JSON
    dataset (``{"prompts": [{"clean": [ids], "corrupt": [ids], "answers": [ids],
    "wrong_answers": []}]}``; BOS is already the first token, so it is read with
    ``prepend_bos=False``)."""
    from circuitdag.tasks import get_task
    from circuitdag.tasks.base import load_data

    data = load_data(get_task(case.task), None, seed=seed, n_prompts=case.n_prompts)
    if data.clean.shape[0] != case.n_prompts:
        raise SystemExit(
            f"{case.task} has only {data.clean.shape[0]} distinct prompts, asked for {case.n_prompts}"
        )
    if data.valid is not None:
        raise SystemExit(f"{case.task} has padded prompts; auto-circuit's metric would read the padding")
    if not bool((data.answer_pos == torch.arange(1, data.clean.shape[1])).all()):
        raise SystemExit(f"{case.task} does not read every non-BOS position (auto-circuit's not_first_seq)")
    prompts = []
    for i in range(data.n_prompts):
        answers = data.correct[i].tolist() if data.correct is not None else []
        prompts.append({"clean": data.clean[i].tolist(), "corrupt": data.corrupted[i].tolist(),
                        "answers": answers, "wrong_answers": []})  # fmt: skip
    path.write_text(json.dumps({"source": f"circuitdag task {case.task}, seed {seed}", "prompts": prompts}))
    return {"n_prompts": data.n_prompts, "seq_len": int(data.clean.shape[1])}


def read_dataset(path: Path):
    """The JSON dataset as circuitdag :class:`TaskData` (every non-BOS position answers)."""
    from circuitdag.tasks.base import TaskData

    prompts = json.loads(path.read_text())["prompts"]
    clean = torch.tensor([p["clean"] for p in prompts])
    corrupted = torch.tensor([p["corrupt"] for p in prompts])
    n, seq = clean.shape
    answer_pos = torch.arange(1, seq).expand(n, seq - 1).clone()
    correct = torch.tensor([p["answers"] for p in prompts]) if prompts[0]["answers"] else None
    return TaskData(clean=clean, corrupted=corrupted, answer_pos=answer_pos, correct=correct)


# ----------------------------------------------------------------- circuitdag worker side
def mse(logits: torch.Tensor, ref) -> torch.Tensor:
    """auto-circuit's ``mse`` faithfulness: mean squared error over prompts, answer
    positions and output dimensions (``torch.nn.functional.mse_loss``), per candidate."""
    return (logits - ref.logits).pow(2).mean(dim=(1, 2, 3))


class CircuitdagCase:
    def __init__(self, spec: dict[str, Any]) -> None:
        from circuitdag.acdc_search import acdc_fast, acdc_reference
        from circuitdag.graph import Graph
        from circuitdag.models import spec_of
        from circuitdag.prepare import position_layout
        from circuitdag.tasks import get_task
        from circuitdag.tasks.base import load_data

        self.algos = {"fast": acdc_fast, "reference": acdc_reference}
        task = get_task(spec["task"])
        self.model = task.load_model(dtype=getattr(torch, spec["dtype"]))
        self.data = read_dataset(Path(spec["data"]))
        own = load_data(task, self.model, seed=spec["seed"], n_prompts=spec["n_prompts"])
        if not (torch.equal(own.clean, self.data.clean) and torch.equal(own.corrupted, self.data.corrupted)):
            raise SystemExit("the JSON dataset differs from circuitdag's task data")
        layout = None
        if spec["positions"]:
            self.data, layout = position_layout(self.data, spec_of(self.model))
        self.graph = Graph(spec_of(self.model), layout)
        self.metric = mse if spec["metric"] == "mse" else spec["metric"]
        self.threshold = spec["threshold"]
        with torch.no_grad():
            self.clean_out = self.model(self.data.clean.to(next(self.model.parameters()).device))[:, 1:]

    def run(self, algo: str) -> dict[str, Any]:
        from circuitdag.graph import Input
        from circuitdag.patching import Patcher

        t0 = time.perf_counter()
        patcher = Patcher(self.model, self.graph, self.data, ablation="resample", metric=self.metric)
        t1 = time.perf_counter()
        state = self.algos[algo](patcher, self.threshold)
        t2 = time.perf_counter()
        g, e = self.graph, self.graph.edges
        pos = g.positions is not None
        kept = [[g.nodes[e.src[i]].component, g.nodes[e.dst[i]].component, Input(e.input[i]).label,
                 int(e.src_pos[i]) if pos else None] for i in state.alive.nonzero()[0]]  # fmt: skip
        return {"seconds": t2 - t0, "search": t2 - t1, "kept": sorted(kept, key=str), "n_kept": len(kept)}


def circuitdag_worker() -> None:
    """The loop of the circuitdag worker process (see the ``_auto_circuit_worker`` protocol)."""
    out = sys.stdout
    sys.stdout = sys.stderr
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    case: CircuitdagCase | None = None
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        if req["cmd"] == "setup":
            import circuitdag

            case = CircuitdagCase(req["case"])
            for algo in case.algos:
                case.run(algo)  # warm-up
            ans: dict[str, Any] = {"n_edges": case.graph.n_edges, "clean_out": case.clean_out.tolist(),
                                   "versions": {"torch": torch.__version__, "circuitdag": circuitdag.__version__}}  # fmt: skip
        else:
            assert case is not None
            ans = case.run(req["algo"])
        out.write(json.dumps(ans) + "\n")
        out.flush()


# ---------------------------------------------------------------------------- orchestrator
class Worker:
    """A worker process answering JSON lines."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0",
                   TQDM_DISABLE="1", PYTHONWARNINGS="ignore")  # fmt: skip
        self.name, self.log = name, log
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("w"),
                                     text=True, env=env, cwd=ROOT)  # fmt: skip

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log.read_text()[-3000:]
            raise SystemExit(f"the {self.name} worker died; the end of its log ({self.log}):\n{tail}")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.ask_quit()
        finally:
            self.proc.wait(timeout=30)

    def ask_quit(self) -> None:
        if self.proc.poll() is None and self.proc.stdin:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()


def prune(kept: list[list], causal: bool, n_pos: int) -> set[tuple]:
    """The edges of ``kept`` ([src, dst, input, pos]) on a path from an ``embed`` node to
    ``logits``, in auto-circuit's graph: without positions nodes are components; with
    positions a sender at p feeds the Q/MLP/logits input at p and the K/V input at p of
    the head, which reaches the head's output at every query position that sees p."""
    edges = [tuple(e) for e in kept]

    def src_node(e):
        return (e[0], e[3])

    def dst_nodes(e):
        _, d, inp, p = e
        if d == "logits":
            return [("logits", None)]
        if p is not None and inp in ("k", "v"):
            return [(d, q) for q in range(n_pos) if not causal or q >= p]
        return [(d, p)]

    fwd = {n for e in edges if e[0] == "embed" for n in [src_node(e)]}
    changed = True
    while changed:  # forward closure from the embed nodes
        changed = False
        for e in edges:
            if src_node(e) in fwd:
                for n in dst_nodes(e):
                    if n not in fwd:
                        fwd.add(n)
                        changed = True
    bwd = {("logits", None)}
    changed = True
    while changed:  # backward closure from logits
        changed = False
        for e in edges:
            if src_node(e) not in bwd and any(n in bwd for n in dst_nodes(e)):
                bwd.add(src_node(e))
                changed = True
    return {e for e in edges if src_node(e) in fwd and any(n in bwd for n in dst_nodes(e))}


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3f} s ({statistics.median(xs):.3f}-{max(xs):.3f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reps", type=int, default=5, help="timed rounds per case (best of N; default 5)")
    ap.add_argument("--ref-reps", type=int, help="timed rounds of circuitdag's reference (default: --reps)")
    ap.add_argument("--only", nargs="*", help="run the cases whose label contains one of these words")
    ap.add_argument("--prompts", type=int, nargs="*", help="run only the cases with these prompt counts")
    ap.add_argument(
        "--no-reference", action="store_true", help="skip circuitdag's reference (slow position-aware)"
    )
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64"),
        help="both sides (auto-circuit's tracr models are float32)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of circuitdag's counterfactual pairs")
    ap.add_argument("--auto-circuit-python", default=str(AC_VENV / "bin" / "python"))
    ap.add_argument("--keep", help="keep the datasets and worker logs in this directory")
    ap.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "vs_auto_circuit.txt"),
        help="write the table here ('' for nowhere)",
    )
    ap.add_argument("--json", help="also write every timing and edge count here")
    args = ap.parse_args(argv)
    if args.worker:
        circuitdag_worker()
        return 0
    if not Path(args.auto_circuit_python).exists():
        print(f"no auto-circuit environment at {args.auto_circuit_python}: run bash scripts/setup_auto_circuit.sh",
              file=sys.stderr)  # fmt: skip
        return 2
    cases = [c for c in CASES if (not args.only or any(o in c.label for o in args.only))
             and (not args.prompts or c.n_prompts in args.prompts)]  # fmt: skip
    algos = [a for a in ALGOS if not (args.no_reference and a == "reference")]
    ref_reps = args.reps if args.ref_reps is None else min(args.ref_reps, args.reps)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="vs-auto-circuit-"))
    work.mkdir(parents=True, exist_ok=True)

    ac = Worker("auto-circuit", [args.auto_circuit_python, str(AC_WORKER)], work / "auto_circuit.log")
    cd = Worker(
        "circuitdag", [sys.executable, str(Path(__file__).resolve()), "--worker"], work / "circuitdag.log"
    )
    started = time.time()
    load0 = os.getloadavg()
    results = []
    versions: dict[str, str] = {}
    try:
        for ci, case in enumerate(cases):
            data = work / f"case{ci}.json"
            shape = write_dataset(case, data, args.seed)
            task_model = ROOT / "circuitdag" / "models" / "zoo" / "tracr" / _program(case.task)
            spec = {"task": case.task, "model": str(task_model), "data": str(data), "metric": case.metric,
                    "n_prompts": case.n_prompts, "seq_len": shape["seq_len"], "positions": case.positions,
                    "tau": list(case.tau), "threshold": case.threshold, "dtype": args.dtype, "seed": args.seed,
                    "algos": algos}  # fmt: skip
            print(
                f"[{case.label}, {case.n_prompts} prompts] setting up and warming up ...",
                file=sys.stderr,
                flush=True,
            )
            a_setup = ac.ask({"cmd": "setup", "case": spec})
            c_setup = cd.ask({"cmd": "setup", "case": spec})
            versions.update({f"{k} (auto-circuit side)": v for k, v in a_setup["versions"].items()})
            versions.update({f"{k} (circuitdag side)": v for k, v in c_setup["versions"].items()})
            out_diff = (
                (torch.tensor(a_setup["clean_out"]) - torch.tensor(c_setup["clean_out"])).abs().max().item()
            )
            times: dict[str, list[float]] = {a: [] for a in algos}
            search: dict[str, list[float]] = {a: [] for a in algos if a != "auto-circuit"}
            kept: dict[str, set[tuple]] = {}
            stable = True
            for r in range(args.reps):
                for algo in algos[r % len(algos) :] + algos[: r % len(algos)]:  # rotate the order
                    if algo == "reference" and r >= ref_reps:
                        continue
                    ans = (
                        ac.ask({"cmd": "run"})
                        if algo == "auto-circuit"
                        else cd.ask({"cmd": "run", "algo": algo})
                    )
                    times[algo].append(ans["seconds"])
                    if algo in search:
                        search[algo].append(ans["search"])
                    k = {tuple(e) for e in ans["kept"]}
                    stable &= kept.setdefault(algo, k) == k
            n_pos = shape["seq_len"]
            ac_pruned = prune([list(e) for e in kept["auto-circuit"]], causal=False, n_pos=n_pos)
            cd_proj = prune([list(e) for e in kept["fast"]], causal=False, n_pos=n_pos)
            row = {
                "case": case.label, "prompts": case.n_prompts, "positions": case.positions, "metric": case.metric,
                "threshold": case.threshold, "edges_ac": a_setup["n_edges"], "edges_cd": c_setup["n_edges"],
                "kept_ac_raw": len(kept["auto-circuit"]), "kept_ac": len(ac_pruned), "kept_cd": len(kept["fast"]),
                "kept_cd_projected": len(cd_proj), "same_edges": ac_pruned == cd_proj,
                "fast_eq_reference": "reference" not in kept or kept["fast"] == kept["reference"],
                "stable": stable, "max_output_diff": out_diff, "seconds": times, "search_seconds": search,
                "only_ac": sorted(map(str, ac_pruned - cd_proj)), "only_cd": sorted(map(str, cd_proj - ac_pruned)),
            }  # fmt: skip
            results.append(row)
            print(_row_line(row), file=sys.stderr, flush=True)
    finally:
        for w in (ac, cd):
            w.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = _report(results, args, versions, load0, os.getloadavg(), time.time() - started)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "rows": results}, indent=1))
    ok = all(r["same_edges"] and r["fast_eq_reference"] and r["stable"] and r["max_output_diff"] < 1e-4
             for r in results)  # fmt: skip
    return 0 if ok else 1


def _program(task: str) -> str:
    from circuitdag.tasks import get_task

    return get_task(task).program


def _commit() -> str:
    """The commit circuitdag was measured at, with '+changes' when circuitdag/ differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "circuitdag"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip() != ""  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return head + (" +changes" if dirty else "")


def _row_line(r: dict[str, Any]) -> str:
    s = {a: min(v) for a, v in r["seconds"].items()}
    ratio = f"ac/fast {s['auto-circuit'] / s['fast']:.2f}x" + (
        f", ref/fast {s['reference'] / s['fast']:.2f}x" if "reference" in s else ""
    )
    return (f"  {r['case']} ({r['prompts']}): " + ", ".join(f"{a} {spread(v)}" for a, v in r["seconds"].items())
            + f"; {ratio}; edges equal: {r['same_edges']}")  # fmt: skip


def _report(rows: list[dict[str, Any]], args, versions: dict[str, str], load0, load1, wall: float) -> str:
    ref_reps = args.reps if args.ref_reps is None else min(args.ref_reps, args.reps)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        "circuitdag vs auto-circuit: exact ACDC on the same tracr models, prompts, corrupted prompts and metric",
        (f"(benchmarks/vs_auto_circuit.py; {time.strftime('%Y-%m-%d %H:%M')}; {cpu}, {os.cpu_count()} cores; "
         f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; {wall:.0f} s in all)"),
        (f"resample ablation, one torch thread, {args.dtype}, a warm-up run, then {args.reps} interleaved rounds"
         f"{f' ({ref_reps} of the reference)' if ref_reps < args.reps else ''}: "
         "best (median-worst) seconds; ratios of the bests"),
        "versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + f"; circuitdag at {_commit()}",
        "command: " + shlex.join(["benchmarks/vs_auto_circuit.py", *sys.argv[1:]]),
        "circuitdag: Patcher (cached clean/corrupted runs) + search; auto-circuit: acdc_prune_scores (caches its own runs)",
        "",
        ("| setup | prompts | tau | auto-circuit 1.0.1 | circuitdag fast | circuitdag reference | auto-circuit / fast "
         "| reference / fast | edges (ac / cd) | circuit (ac / cd) | same edges |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for r in rows:
        t = r["seconds"]
        best = {a: min(v) for a, v in t.items()}
        ref = spread(t["reference"]) if "reference" in t else "-"
        ref_ratio = f"{best['reference'] / best['fast']:.2f}x" if "reference" in t else "-"
        circ = f"{r['kept_ac']} / {r['kept_cd']}" + (
            f" (-> {r['kept_cd_projected']})" if r["positions"] else ""
        )
        same = "yes" if r["same_edges"] else "NO"
        if not r["fast_eq_reference"]:
            same += ", fast != reference"
        if not r["stable"]:
            same += ", runs differ"
        lines.append(
            f"| {r['case']} | {r['prompts']} | {r['threshold']:g} | {spread(t['auto-circuit'])} | {spread(t['fast'])} "
            f"| {ref} | {best['auto-circuit'] / best['fast']:.2f}x | {ref_ratio} | {r['edges_ac']} / {r['edges_cd']} "
            f"| {circ} | {same} |"
        )  # fmt: skip
    lines += ["", "circuitdag search alone (Patcher built outside the timer), best (median-worst):"]
    for r in rows:
        lines.append(f"  {r['case']}, {r['prompts']} prompts: "
                     + ", ".join(f"{a} {spread(v)}" for a, v in r["search_seconds"].items()))  # fmt: skip
    lines += ["", "checks:"]
    for r in rows:
        extra = ""
        if not r["same_edges"]:
            extra = f"; only auto-circuit: {r['only_ac'][:6]}; only circuitdag: {r['only_cd'][:6]}"
        lines.append(f"  {r['case']}, {r['prompts']} prompts: max |output difference| of the two models "
                     f"{r['max_output_diff']:.1e}; auto-circuit kept {r['kept_ac_raw']} edges before pruning to "
                     f"paths, {r['kept_ac']} after{extra}")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
