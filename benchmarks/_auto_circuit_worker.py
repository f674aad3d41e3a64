"""auto-circuit side of benchmarks/vs_auto_circuit.py; runs in .venv-autocircuit.

Do not run it by hand: vs_auto_circuit.py starts it (``.venv-autocircuit/bin/python
benchmarks/_auto_circuit_worker.py``) and talks to it in JSON lines, one request per
line on stdin, one answer per line on the original stdout (everything the libraries
print goes to stderr). It imports only auto-circuit, TransformerLens 2.x, torch and
safetensors, never circuitdag.

Requests:
``{"cmd": "setup", "case": {...}}``: build the TransformerLens HookedTransformer from
circuitdag's compiled tracr weights (``case["model"]``: the path without suffix of the
``.json`` config + ``.safetensors`` weights, TransformerLens names), wrap it with
auto-circuit's ``patchable_model`` (factorized, separate Q/K/V, ``not_first_seq`` output,
``seq_len`` for a position-aware case), load ``case["data"]`` with auto-circuit's
``load_datasets_from_json`` (pre-tokenized prompts, one batch of all prompts), check,
and run ACDC once untimed (warm-up). Answers the model's clean outputs and the edge count.
``{"cmd": "run"}``: one timed ``acdc_prune_scores`` run at the case's threshold (one tau);
answers the seconds and the kept edges (score = inf) as ``[src, dst, input, pos]``.
``{"cmd": "quit"}``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from pathlib import Path

REAL_STDOUT = sys.stdout
sys.stdout = sys.stderr  # library prints must not mix with the answers

import auto_circuit.prune_algos.ACDC as acdc_module
import torch
from auto_circuit.data import load_datasets_from_json
from auto_circuit.utils.graph_utils import patchable_model
from safetensors.torch import load_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

# The progress bars are not part of the algorithm; circuitdag's are off too.
acdc_module.tqdm = functools.partial(acdc_module.tqdm, disable=True)


def build_model(path: str, dtype: torch.dtype) -> HookedTransformer:
    """A HookedTransformer with the weights circuitdag ships for a tracr program (as
    auto-circuit's own ``get_tracr_model`` builds one from the compiled tracr program:
    no LayerNorm, relu, bidirectional attention, split Q/K/V inputs, per-head results)."""
    doc = json.loads(Path(path + ".json").read_text())
    c = doc["config"]
    cfg = HookedTransformerConfig(
        model_name=c["model_name"],
        n_layers=c["n_layers"],
        d_model=c["d_model"],
        d_head=c["d_head"],
        n_ctx=c["n_ctx"],
        d_vocab=c["d_vocab"],
        d_vocab_out=c["d_vocab_out"],
        d_mlp=c["d_mlp"] if c["d_mlp"] else None,
        n_heads=c["n_heads"],
        act_fn=c["act_fn"],
        attn_only=c["d_mlp"] == 0,
        attention_dir="causal" if c["causal"] else "bidirectional",
        normalization_type=c["normalization"],
        use_attn_result=True,
        use_split_qkv_input=True,
        device="cpu",
        dtype=dtype,
    )
    model = HookedTransformer(cfg)
    model.set_use_hook_mlp_in(True)
    weights = {k: v.to(dtype) for k, v in load_file(path + ".safetensors").items()}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    params = {n for n, _ in model.named_parameters()}
    if unexpected or params & set(missing):
        raise SystemExit(
            f"weights do not fit: missing {sorted(params & set(missing))}, unexpected {unexpected}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


SRC = {"Resid Start": "embed"}


def canonical(edge) -> list:
    """``[src, dst, input, pos]`` in circuitdag's component names."""
    s = edge.src.name
    src = SRC.get(s) or ("m" + s.split()[1] if s.startswith("MLP") else "a" + s[1:])
    d = edge.dest.name
    if d == "Resid End":
        dst, inp = "logits", "resid"
    elif d.startswith("MLP"):
        dst, inp = "m" + d.split()[1], "mlp"
    else:  # A1.0.Q
        head, letter = d.rsplit(".", 1)
        dst, inp = "a" + head[1:], letter.lower()
    return [src, dst, inp, edge.seq_idx]


class Case:
    def __init__(self, case: dict) -> None:
        self.case = case
        dtype = getattr(torch, case["dtype"])
        tl_model = build_model(case["model"], dtype)
        seq_len = case["seq_len"] if case["positions"] else None
        self.model = patchable_model(tl_model, factorized=True, slice_output="not_first_seq", seq_len=seq_len,
                                     separate_qkv=True, device=torch.device("cpu"))  # fmt: skip
        n = case["n_prompts"]
        self.loader, _ = load_datasets_from_json(
            None, Path(case["data"]), torch.device("cpu"), prepend_bos=False, batch_size=n,
            train_test_size=(n, 0), return_seq_length=case["positions"], shuffle=False,
        )  # fmt: skip
        batch = next(iter(self.loader))
        assert batch.clean.shape == (n, case["seq_len"]), batch.clean.shape
        with torch.inference_mode():
            self.clean_out = self.model(batch.clean)[self.model.out_slice]
        base, exp = case["tau"]
        self.tau = (base, exp)
        self.target = {"kl": "kl_div", "mse": "mse"}[case["metric"]]

    def run(self) -> dict:
        base, exp = self.tau
        t = time.perf_counter()
        scores = acdc_module.acdc_prune_scores(self.model, self.loader, None, tao_exps=[exp], tao_bases=[base],
                                               faithfulness_target=self.target)  # fmt: skip
        seconds = time.perf_counter() - t
        kept = [canonical(e) for e in self.model.edges if math.isinf(float(e.prune_score(scores)))]
        return {"seconds": seconds, "kept": sorted(kept, key=str)}


def main() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    case: Case | None = None
    for line in sys.stdin:
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        if req["cmd"] == "setup":
            case = Case(req["case"])
            case.run()  # warm-up
            ans = {"n_edges": len(case.model.edges), "clean_out": case.clean_out.tolist(),
                   "versions": {"torch": torch.__version__, "auto_circuit": _version("auto-circuit"),
                                "transformer_lens": _version("transformer-lens")}}  # fmt: skip
        elif req["cmd"] == "run":
            assert case is not None
            ans = case.run()
        else:
            ans = {"error": f"unknown command {req['cmd']!r}"}
        REAL_STDOUT.write(json.dumps(ans) + "\n")
        REAL_STDOUT.flush()


def _version(dist: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(dist)


if __name__ == "__main__":
    main()
