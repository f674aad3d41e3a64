"""Time to result on SmolLM2-135M: the whole ``discover`` command against its search (issue 26).

    /tmp/bin/smol .venv/bin/python benchmarks/trust_path.py --runs 1 --threads 1 [--svg] [--compare DIR]

Runs ``circuitdag discover --model smollm2-135m --task pronoun --algorithm eap-ig`` as a
fresh process (``--threads 2`` unless ``--threads``, no SVG), once with the held-out check (the default) and
once with ``--holdout 0``, alternating for ``--runs`` rounds, and prints for each run the
whole process's wall time, the search time circuit.json records (``stats.seconds``), their
ratio (issue 26 asks for at most 1.3x), the same in CPU seconds (the process's, and the
search's ``stats.cpu_seconds``: on a machine other jobs share, the CPU ratio moves less than
the wall one) and where the rest went
(``stats.phase_seconds``: loading the model, caching the runs, the held-out prompts' runs,
the run record's exact passes, the held-out check, with ``stats.phase_cpu_seconds``; what is left of the whole is the
process's imports, writing circuit.json and with ``--svg`` drawing circuit.svg). ``--svg``
adds the user's own command (the default, drawing circuit.svg). ``--compare DIR`` runs the
circuitdag checkout in DIR (``python -m circuitdag.cli`` there: an older commit, say) before
this one in every round, so that before and after are measured side by side. Each run
takes minutes at 100 prompts, so best of N is impractical: every run is printed, and the
load average next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = ["discover", "--model", "smollm2-135m", "--task", "pronoun", "--algorithm", "eap-ig", "-q"]
CONFIGS = {"held-out on (default)": ["--no-svg"], "--holdout 0": ["--holdout", "0", "--no-svg"]}
SVG = {"default, with the SVG": []}


def run(extra: list[str], out: Path, threads: int, source: Path | None = None) -> dict:
    """One ``discover`` process (this checkout's, or with ``source`` the one in that directory)."""
    script = Path(sys.executable).with_name("circuitdag")
    head = [sys.executable, str(script)] if script.exists() and source is None else [sys.executable, "-m", "circuitdag.cli"]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    c0 = os.times()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*head, *BASE, "--threads", str(threads), *extra, "--out", str(out)], check=True, env=env,
                   stdout=subprocess.DEVNULL, cwd=source)  # fmt: skip
    wall = time.perf_counter() - t0
    c1 = os.times()
    doc = json.loads((out / "circuit.json").read_text())
    st = doc["stats"]
    return {"wall": wall, "cpu": c1.children_user + c1.children_system - c0.children_user - c0.children_system,
            "search": float(st["seconds"]), "search_cpu": st.get("cpu_seconds"), "record": st.get("record_seconds"),
            "phases_cpu": st.get("phase_cpu_seconds", {}),
            "phases": st.get("phase_seconds", {}), "load": (load, os.getloadavg()[0]), "edges": doc["n_edges"],
            "peak_gb": st.get("peak_memory_gb"), "heldout": (doc.get("heldout") or {}).get("faithfulness"),
            "f": doc.get("metric_circuit")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1, help="rounds (each runs every configuration once)")
    ap.add_argument("--only", choices=["default", "no-holdout"], help="run one configuration only")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each discover (default 2; on a machine "
                    "shared with other jobs, 1: two threads wait on each other when a core is busy)")
    ap.add_argument("--svg", action="store_true", help="also the default command with its SVG (the user's command)")
    ap.add_argument("--compare", metavar="DIR", type=Path, help="a circuitdag checkout to run before this one in "
                    "every round (python -m circuitdag.cli in DIR)")
    args = ap.parse_args()
    configs = {k: v for k, v in CONFIGS.items() if args.only is None or (args.only == "default") == ("0" not in v)}
    if args.svg:
        configs.update(SVG)
    sources = [("before", args.compare.resolve()), ("after", None)] if args.compare else [("", None)]
    tmp = Path(tempfile.mkdtemp(prefix="trust_path_"))
    print(f"{'configuration':<30} {'whole s':>8} {'search s':>8} {'ratio':>6} {'CPU s':>6} {'search':>6} {'ratio':>6}  "
          "phases: wall s (CPU s)  [load before/after]")  # fmt: skip
    for r in range(args.runs):
        for name, extra in configs.items():
            for label, source in sources:
                res = run(extra, tmp / f"{r}-{len(extra)}-{label}", args.threads, source)
                ph = ", ".join(f"{k} {v:.1f} ({res['phases_cpu'].get(k, float('nan')):.1f})"
                               for k, v in res["phases"].items())  # fmt: skip
                sc = float(res["search_cpu"] or "nan")
                rest = res["wall"] - sum(res["phases"].values())
                title = f"{name}{', ' + label if label else ''}"
                print(f"{title:<30} {res['wall']:>8.1f} {res['search']:>8.1f} {res['wall'] / res['search']:>6.2f} "
                      f"{res['cpu']:>6.1f} {sc:>6.1f} {res['cpu'] / sc:>6.2f}  {ph}, outside the phases {rest:.1f}; record "
                      f"{res['record']:.1f}; {res['edges']} edges, metric {res['f']}, held-out f {res['heldout']}, "
                      f"peak {res['peak_gb']} GB  [load {res['load'][0]:.1f}/{res['load'][1]:.1f}]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
