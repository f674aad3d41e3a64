"""Compile the shipped tracr programs and derive their ground-truth circuits.

    pip install -e .[tracr]
    python scripts/compile_tracr.py            # writes circuitdag/models/zoo/tracr/*

For every program in :data:`circuitdag.tasks.tracr.SPECS` this

1. compiles the RASP program with tracr (BOS/PAD tokens ``BOS``/``PAD``, non-causal);
2. copies the weights into a :class:`circuitdag.models.hooked.TinyTransformer`
   (tracr layer i's attention and MLP become block i's; heads and MLP widths are
   already padded to the maximum by tracr);
3. checks, on the whole input space, that the TinyTransformer reproduces tracr: the
   layer-0 residual, the raw output-space values, the decoded output, and the plain
   Python reference of the program;
4. derives the ground truth from the weights (docs/tracr.md):
   * structural edges: sender write matrix @ receiver read matrix is non-zero, restricted
     to edges on a path from ``embed`` to ``logits``;
   * for each ablation (zero, resample) the edges that can matter: an exact-output
     version of ACDC run over the structural edges. Destinations are visited in reverse
     topological order, each incoming edge is removed and stays removed if the outputs
     at every answer position of every input stay within ``TOL`` of the full model's;
     finally edges off every embed->logits path are dropped. The remaining edges are
     the ground truth, the other structural edges are "inert". The result is checked to
     be independent of the order in which a destination's edges are tried;
5. saves ``<name>.safetensors`` + ``<name>.json`` with the program text, vocabularies,
   a few input/output examples (used by the tests) and the ground truth.

Path patching is implemented here from scratch in numpy (float64), following
DESIGN.md: a receiver input is ``sum over present edges of sender output in this pass
+ sum over absent edges of sender output in the corrupted run`` (zeros for zero
ablation).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import torch
from tracr.compiler import compiling, lib
from tracr.rasp import rasp

from circuitdag.models.hooked import TinyConfig, TinyTransformer, load_tiny, save_tiny
from circuitdag.tasks import tracr as tasks
from circuitdag.tasks.tracr import BOS, PAD, SPECS, TracrSpec, counterfactual_pairs, input_space

jax.config.update("jax_platforms", "cpu")

#: Output deviation (max abs, any input, any answer position) below which an edge is inert.
TOL = 1e-4
#: A weight product with Frobenius norm below this is zero (tracr weights are O(1)..O(100)).
WEIGHT_EPS = 1e-8
#: Counterfactuals per clean input when deriving the resample ground truth.
N_RESAMPLE_SEEDS = 4


def _programs() -> dict[str, tuple[rasp.SOp, str]]:
    return {
        "reverse": (
            lib.make_reverse(rasp.tokens),
            (
                "length = SelectorWidth(Select(tokens, tokens, TRUE)); "
                "opp_idx = length - indices - 1; "
                "reverse = Aggregate(Select(indices, opp_idx, EQ), tokens)"
            ),
        ),
        "proportion": (
            lib.make_frac_prevs(rasp.tokens == "x"),
            (
                'frac_prevs = numerical(Aggregate(Select(indices, indices, LEQ), numerical(tokens == "x"), '
                "default=0))"
            ),
        ),
        "sort_unique": (
            lib.make_sort_unique(rasp.tokens, rasp.tokens),
            (
                "target_pos = SelectorWidth(Select(tokens, tokens, LT)); "
                "sort = Aggregate(Select(target_pos, indices, EQ), tokens)"
            ),
        ),
        "hist": (lib.make_hist(), "hist = SelectorWidth(Select(tokens, tokens, EQ))"),
        "length": (lib.make_length(), "length = SelectorWidth(Select(tokens, tokens, TRUE))"),
        "pair_balance": (
            lib.make_pair_balance(rasp.tokens, "(", ")"),
            (
                'opens = frac_prevs(tokens == "("); closes = frac_prevs(tokens == ")"); '
                "pair_balance = numerical(LinearSequenceMap(opens, closes, 1, -1))"
            ),
        ),
    }


# --------------------------------------------------------------------------- export


def to_tiny(assembled, spec: TracrSpec, label: str) -> TinyTransformer:
    """Copy tracr's haiku parameters into a TinyTransformer (float64)."""
    p = {
        k: {kk: np.asarray(vv, dtype=np.float64) for kk, vv in v.items()} for k, v in assembled.params.items()
    }
    mc = assembled.model_config
    n_layers, n_heads, d_head, d_mlp = mc.num_layers, mc.num_heads, mc.key_size, mc.mlp_hidden_size
    W_E = p["token_embed"]["embeddings"]
    W_pos = p["pos_embed"]["embeddings"]
    d_vocab, d_model = W_E.shape
    # tracr's unembedding is a projection of the residual onto the output space: the
    # directions named after the program's label (one per value when categorical).
    labels = assembled.residual_labels
    if spec.numerical:
        out_dirs = [labels.index(label)]
    else:
        out_dirs = [labels.index(f"{label}:{v}") for v in _out_vocab(assembled)]
    W_U = np.zeros((d_model, len(out_dirs)))
    for j, d in enumerate(out_dirs):
        W_U[d, j] = 1.0

    cfg = TinyConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab,
        n_ctx=W_pos.shape[0], d_mlp=d_mlp, d_vocab_out=len(out_dirs), act_fn="relu",
        normalization=None, causal=False, model_name=f"tracr-{spec.name}",
    )  # fmt: skip
    model = TinyTransformer(cfg).to(torch.float64)
    sd = {"W_E": W_E, "W_pos": W_pos, "W_U": W_U, "b_U": np.zeros(len(out_dirs))}

    def heads_in(w):  # (d_model, heads*d_head) -> (heads, d_model, d_head)
        return w.reshape(d_model, n_heads, d_head).transpose(1, 0, 2)

    for layer in range(n_layers):
        a, m = f"transformer/layer_{layer}/attn", f"transformer/layer_{layer}/mlp"
        b = f"blocks.{layer}"
        # tracr divides attention scores by sqrt(key_size) exactly as TinyTransformer
        # divides by sqrt(d_head), and d_head == key_size, so W_Q is copied unscaled.
        for ours, theirs in (("Q", "query"), ("K", "key"), ("V", "value")):
            sd[f"{b}.attn.W_{ours}"] = heads_in(p[f"{a}/{theirs}"]["w"])
            sd[f"{b}.attn.b_{ours}"] = p[f"{a}/{theirs}"]["b"].reshape(n_heads, d_head)
        sd[f"{b}.attn.W_O"] = p[f"{a}/linear"]["w"].reshape(n_heads, d_head, d_model)
        sd[f"{b}.attn.b_O"] = p[f"{a}/linear"]["b"]
        sd[f"{b}.mlp.W_in"] = p[f"{m}/linear_1"]["w"]
        sd[f"{b}.mlp.b_in"] = p[f"{m}/linear_1"]["b"]
        sd[f"{b}.mlp.W_out"] = p[f"{m}/linear_2"]["w"]
        sd[f"{b}.mlp.b_out"] = p[f"{m}/linear_2"]["b"]
    for k, v in sd.items():
        if k.split(".")[-1].startswith("b_") and k != "b_U" and np.abs(v).max() > 0:
            raise SystemExit(f"{spec.name}: tracr bias {k} is non-zero; the node model assumes zero biases")
    missing, unexpected = model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith((".w", ".b"))], (missing, unexpected)
    # Round-trip through float32, the precision that is shipped, so that everything
    # below (checks and ground truth) uses exactly the shipped weights.
    model.float().double()
    return model


# --------------------------------------------------------------------------- numpy node model


@dataclass
class Graph:
    """The full (non-positional) edge graph of a model, as in DESIGN.md."""

    nodes: list[str]
    edges: list[tuple[str, str, str]]  # (src, dst, input)

    @staticmethod
    def of(n_layers: int, n_heads: int) -> Graph:
        nodes, edges = ["embed"], []
        for layer in range(n_layers):
            upstream = list(nodes)
            heads = [f"a{layer}.{h}" for h in range(n_heads)]
            for h in heads:
                edges += [(s, h, kind) for kind in "qkv" for s in upstream]
            nodes += heads
            edges += [(s, f"m{layer}", "mlp") for s in nodes]
            nodes.append(f"m{layer}")
        edges += [(s, "logits", "resid") for s in nodes]
        return Graph(nodes + ["logits"], edges)

    def name(self, e: tuple[str, str, str]) -> str:
        return f"{e[0]}->{e[1]}<{e[2]}>"


class NodeModel:
    """Forward passes with a circuit, in float64 numpy, from a TinyTransformer's weights."""

    def __init__(self, model: TinyTransformer) -> None:
        w = {k: v.detach().double().numpy() for k, v in model.named_weights().items()}
        self.w, self.cfg = w, model.cfg
        self.graph = Graph.of(model.cfg.n_layers, model.cfg.n_heads)
        self.index = {e: i for i, e in enumerate(self.graph.edges)}
        self.incoming: dict[tuple[str, str], list[str]] = {}
        for s, d, k in self.graph.edges:
            self.incoming.setdefault((d, k), []).append(s)

    # Read/write matrices (rows/cols in the residual basis).
    def write_matrix(self, node: str) -> np.ndarray:
        w = self.w
        if node == "embed":
            return np.concatenate([w["embed.W_E"], w["pos_embed.W_pos"]], 0)
        if node.startswith("a"):
            layer, h = map(int, node[1:].split("."))
            return w[f"blocks.{layer}.attn.W_O"][h]
        return w[f"blocks.{node[1:]}.mlp.W_out"]

    def read_matrix(self, node: str, kind: str) -> np.ndarray:
        w = self.w
        if node == "logits":
            return w["unembed.W_U"]
        if node.startswith("a"):
            layer, h = map(int, node[1:].split("."))
            return w[f"blocks.{layer}.attn.W_{kind.upper()}"][h]
        return w[f"blocks.{node[1:]}.mlp.W_in"]

    def structural(self) -> np.ndarray:
        """Edges whose weight product is non-zero and that lie on an embed->logits path."""
        g = self.graph
        nz = np.array(
            [
                np.linalg.norm(self.write_matrix(s) @ self.read_matrix(d, k)) > WEIGHT_EPS
                for s, d, k in g.edges
            ]
        )
        return on_path(g, nz)

    def run(
        self,
        tokens: np.ndarray,
        present: np.ndarray | None = None,
        corrupt: dict[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Output-space values (batch pos d_out) and every node's output.

        ``present`` is a bool mask over ``graph.edges`` (None = all present); an absent
        edge carries the sender's output from ``corrupt`` (None = zero ablation).
        """
        w, cfg = self.w, self.cfg
        out: dict[str, np.ndarray] = {
            "embed": w["embed.W_E"][tokens] + w["pos_embed.W_pos"][: tokens.shape[1]]
        }

        def inp(dst: str, kind: str) -> np.ndarray:
            total = 0.0
            for s in self.incoming[(dst, kind)]:
                keep = present is None or present[self.index[(s, dst, kind)]]
                if keep:
                    total = total + out[s]
                elif corrupt is not None:
                    total = total + corrupt[s]
            return total if isinstance(total, np.ndarray) else np.zeros_like(out["embed"])

        for layer in range(cfg.n_layers):
            b = f"blocks.{layer}"
            for h in range(cfg.n_heads):
                node = f"a{layer}.{h}"
                q = inp(node, "q") @ w[f"{b}.attn.W_Q"][h]
                k = inp(node, "k") @ w[f"{b}.attn.W_K"][h]
                v = inp(node, "v") @ w[f"{b}.attn.W_V"][h]
                scores = np.einsum("bqe,bke->bqk", q, k) / np.sqrt(cfg.d_head)
                scores = scores - scores.max(-1, keepdims=True)
                pattern = np.exp(scores)
                pattern /= pattern.sum(-1, keepdims=True)
                out[node] = np.einsum("bqk,bke->bqe", pattern, v) @ w[f"{b}.attn.W_O"][h]
            node = f"m{layer}"
            x = inp(node, "mlp")
            out[node] = np.maximum(x @ w[f"{b}.mlp.W_in"], 0.0) @ w[f"{b}.mlp.W_out"]
        return inp("logits", "resid") @ w["unembed.W_U"], out


def on_path(g: Graph, alive: np.ndarray) -> np.ndarray:
    """Mask of the edges in ``alive`` that lie on some embed->logits path."""
    alive = alive.copy()
    while True:
        reach_from_embed, reach_logits = {"embed"}, {"logits"}
        for i, (s, d, _) in enumerate(g.edges):  # edges are listed in topological order of dst
            if alive[i] and s in reach_from_embed:
                reach_from_embed.add(d)
        for i, (s, d, _) in reversed(list(enumerate(g.edges))):
            if alive[i] and d in reach_logits:
                reach_logits.add(s)
        new = np.array(
            [a and s in reach_from_embed and d in reach_logits for a, (s, d, _) in zip(alive, g.edges)]
        )
        if (new == alive).all():
            return new
        alive = new


# --------------------------------------------------------------------------- ground truth


@dataclass
class Probe:
    """Inputs on which the ground truth is decided, for one ablation."""

    tokens: np.ndarray
    corrupt: dict[str, np.ndarray] | None  # node outputs of the counterfactual run; None = zero
    mask: np.ndarray  # (batch pos) answer positions that count
    full: np.ndarray  # full model's output


def deviation(nm: NodeModel, probe: Probe, present: np.ndarray) -> tuple[float, float]:
    """(max abs deviation, mean l2 deviation) of the outputs from the full model's."""
    out, _ = nm.run(probe.tokens, present, probe.corrupt)
    diff = np.linalg.norm(out - probe.full, axis=-1)[probe.mask]
    return float(np.abs(out - probe.full)[probe.mask].max()), float(diff.mean())


def exact_acdc(
    nm: NodeModel, probe: Probe, start: np.ndarray, reverse_senders: bool, threshold: float | None = None
) -> np.ndarray:
    """ACDC over the edges in ``start`` (DESIGN.md, "Patching semantics").

    With ``threshold=None`` an edge stays removed iff every output value stays within
    ``TOL`` of the full model's (the ground-truth rule). With a threshold it is plain
    ACDC with the l2 metric (mean over prompts and answer positions of the l2 distance
    to the full model's output): removed iff ``m_new - m_cur < threshold``.
    """
    g, cfg = nm.graph, nm.cfg
    present = start.copy()
    m_cur = 0.0
    dsts = ["logits"]
    for layer in reversed(range(cfg.n_layers)):
        dsts += [f"m{layer}"] + [f"a{layer}.{h}" for h in reversed(range(cfg.n_heads))]
    for dst in dsts:
        if dst != "logits" and not _reaches_logits(g, present, dst):
            continue
        incoming = [i for i, (s, d, _) in enumerate(g.edges) if d == dst and present[i]]
        for i in reversed(incoming) if reverse_senders else incoming:
            present[i] = False
            max_abs, m_new = deviation(nm, probe, present)
            if threshold is None:
                present[i] = max_abs >= TOL
            elif m_new - m_cur < threshold:
                m_cur = m_new
            else:
                present[i] = True
    return on_path(g, present)


def _reaches_logits(g: Graph, present: np.ndarray, node: str) -> bool:
    reach = {"logits"}
    for i, (s, d, _) in reversed(list(enumerate(g.edges))):
        if present[i] and d in reach:
            reach.add(s)
    return node in reach


def inert_reason(nm: NodeModel, probe: Probe, edge: tuple[str, str, str], circuit: np.ndarray) -> str:
    s, d, kind = edge
    _, full_nodes = nm.run(probe.tokens, None, probe.corrupt)
    if probe.corrupt is not None and np.abs(full_nodes[s] - probe.corrupt[s]).max() < TOL:
        return "sender output is the same on every counterfactual"
    with_e = circuit.copy()
    with_e[nm.index[edge]] = True
    without = with_e.copy()
    without[nm.index[edge]] = False
    _, a = nm.run(probe.tokens, with_e, probe.corrupt)
    _, b = nm.run(probe.tokens, without, probe.corrupt)
    if np.abs(a[d] - b[d]).max() < TOL:
        if kind in "qk":
            return "attention pattern of the receiver does not change"
        return "receiver output does not change"
    return "receiver output changes but the change does not reach the output"


def _probe(
    nm: NodeModel, spec: TracrSpec, encode, ablation: str, seeds: list[int], n_max: int | None
) -> Probe:
    """The probe of ``ablation`` on the task's clean/counterfactual pairs for ``seeds``."""
    clean, corr = [], []
    for seed in seeds:
        c, r = counterfactual_pairs(spec, seed, n_max=n_max)
        clean += c
        corr += r
    tokens = np.array([encode(xs) for xs in clean])
    full, _ = nm.run(tokens)
    mask = np.array([[False] + [x != PAD for x in xs] for xs in clean])
    corrupt = None if ablation == "zero" else nm.run(np.array([encode(xs) for xs in corr]))[1]
    return Probe(tokens, corrupt, mask, full)


def _min_effect_on_task_data(nm: NodeModel, spec: TracrSpec, encode, ablation: str, circuit: np.ndarray):
    """Smallest mean-l2 change from removing one ground-truth edge from the ground-truth
    circuit, on the task's default data (seed 0, at most 100 prompts): what ACDC sees."""
    probe = _probe(nm, spec, encode, ablation, [0], 100)
    effects = []
    for i in np.flatnonzero(circuit):
        c = circuit.copy()
        c[i] = False
        effects.append(deviation(nm, probe, c)[1])
    return min(effects, default=None)


def _acdc_matches(nm: NodeModel, spec: TracrSpec, encode, ablation: str, circuit: np.ndarray) -> bool:
    """Does plain ACDC (l2, the task's default threshold, full graph, either edge order)
    on the task's default data recover exactly ``circuit``?"""
    probe = _probe(nm, spec, encode, ablation, [0], 100)
    start = np.ones(len(nm.graph.edges), dtype=bool)
    return all(
        (exact_acdc(nm, probe, start, rev, threshold=tasks.TracrTask.default_threshold) == circuit).all()
        for rev in (True, False)
    )


def derive_ground_truth(nm: NodeModel, spec: TracrSpec, encode) -> dict:
    g = nm.graph
    structural = nm.structural()
    probes = {
        "zero": _probe(nm, spec, encode, "zero", [0], None),
        "resample": _probe(nm, spec, encode, "resample", list(range(N_RESAMPLE_SEEDS)), None),
    }

    result: dict = {
        "rule": (
            "structural = sender write @ receiver read != 0, on an embed->logits path; edges = "
            f"ACDC over the structural edges keeping an edge iff removing it moves some output "
            f"value by >= {TOL} (max abs, any input of the input space, any answer position); "
            "inert = structural - edges"
        ),
        "tolerance": TOL,
        "n_full_graph_edges": len(g.edges),
        "structural": [g.name(e) for e, m in zip(g.edges, structural) if m],
    }
    for ablation, probe in probes.items():
        a = exact_acdc(nm, probe, structural, reverse_senders=True)
        b = exact_acdc(nm, probe, structural, reverse_senders=False)
        if not (a == b).all():
            raise SystemExit(f"{spec.name}/{ablation}: ground truth depends on the edge order")
        max_dev, _ = deviation(nm, probe, a)
        assert max_dev < TOL, (spec.name, ablation, max_dev)
        # Effects, for the docs and the default threshold: removing one ground-truth
        # edge from the ground-truth circuit, and one inert edge from the full model.
        gt_effects, inert_effects = {}, {}
        for i in np.flatnonzero(a):
            c = a.copy()
            c[i] = False
            gt_effects[g.name(g.edges[i])] = deviation(nm, probe, c)
        inert = np.flatnonzero(structural & ~a)
        for i in inert:
            c = structural.copy()
            c[i] = False
            inert_effects[g.name(g.edges[i])] = deviation(nm, probe, c)
        single = [g.name(g.edges[i]) for i in inert if inert_effects[g.name(g.edges[i])][0] < TOL]
        result[ablation] = {
            "edges": [g.name(e) for e, m in zip(g.edges, a) if m],
            "inert": [g.name(g.edges[i]) for i in inert],
            "why": {g.name(g.edges[i]): inert_reason(nm, probe, g.edges[i], a) for i in inert},
            "inert_alone": single,
            "min_effect_in_circuit": {
                "max_abs": min((v[0] for v in gt_effects.values()), default=None),
                "mean_l2": min((v[1] for v in gt_effects.values()), default=None),
            },
            "max_inert_effect_alone": {
                "max_abs": max((v[0] for v in inert_effects.values()), default=0.0),
                "mean_l2": max((v[1] for v in inert_effects.values()), default=0.0),
            },
            "min_effect_on_task_data": _min_effect_on_task_data(nm, spec, encode, ablation, a),
            "acdc_on_task_data_matches": _acdc_matches(nm, spec, encode, ablation, a),
        }
    return result


# --------------------------------------------------------------------------- main


def check_against_tracr(assembled, model: TinyTransformer, spec: TracrSpec, encode) -> dict:
    """Compare on the whole input space; returns the largest differences found."""
    space = input_space(spec)
    tokens = np.array([encode(xs) for xs in space])
    ref = assembled.forward(assembled.params, jax.numpy.array(tokens))
    resid = np.asarray(ref.transformer_output.output, dtype=np.float64)
    theirs_raw = resid @ model.named_weights()["unembed.W_U"].double().numpy()
    theirs_dec = np.asarray(ref.unembedded_output)
    emb0 = np.asarray(ref.transformer_output.input_embeddings, dtype=np.float64)

    cache: dict[str, torch.Tensor] = {}
    model.add_hook("blocks.0.hook_resid_pre", lambda t, hook: cache.__setitem__("r0", t.detach()))
    with torch.no_grad():
        ours = model(torch.tensor(tokens)).numpy()
    model.reset_hooks()
    mask = np.array([[False] + [x != PAD for x in xs] for xs in space])
    d_emb = float(np.abs(cache["r0"].numpy() - emb0).max())
    d_raw = float(np.abs(ours - theirs_raw)[mask].max())
    if d_emb > 1e-6 or d_raw > 1e-3:
        raise SystemExit(f"{spec.name}: TinyTransformer differs from tracr (embed {d_emb}, output {d_raw})")
    if spec.numerical:
        if np.abs(ours[..., 0] - theirs_dec)[mask].max() > 1e-3:
            raise SystemExit(f"{spec.name}: numerical output differs from tracr")
        decoded = ours[..., 0]
    else:
        if (ours.argmax(-1) != theirs_dec)[mask].any():
            raise SystemExit(f"{spec.name}: decoded argmax differs from tracr")
        decoded = ours.argmax(-1)
    # Both equal the program's plain-Python reference (and tracr's own RASP evaluator).
    out_vocab = None if spec.numerical else _out_vocab(assembled)
    for xs, row in zip(space, decoded):
        want = spec.reference([x for x in xs if x != PAD])
        got = [float(v) if spec.numerical else out_vocab[int(v)] for v in row[1 : 1 + len(want)]]
        if spec.numerical:
            ok = np.allclose(got, want, atol=1e-3)
        else:
            ok = got == want
        if not ok:
            raise SystemExit(f"{spec.name}: output {got} on {xs} but the program gives {want}")
    return {"embed": d_emb, "output": d_raw}


def _out_vocab(assembled) -> list:
    enc = assembled.output_encoder.encoding_map
    return [v for v, _ in sorted(enc.items(), key=lambda kv: kv[1])]


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


def compile_one(name: str, out_dir: Path) -> dict:
    spec = SPECS[name]
    program, text = _programs()[name]
    assembled = compiling.compile_rasp_to_model(
        program, vocab=set(spec.vocab), max_seq_len=spec.max_seq_len, causal=False,
        compiler_bos=BOS, compiler_pad=PAD,
    )  # fmt: skip
    enc = assembled.input_encoder.encoding_map
    input_vocab = [_jsonable(v) for v, _ in sorted(enc.items(), key=lambda kv: kv[1])]
    assert input_vocab[enc[BOS]] == BOS

    def encode(xs):
        return [enc[BOS]] + [enc[x] for x in xs]

    model = to_tiny(assembled, spec, program.label)
    diffs = check_against_tracr(assembled, model, spec, encode)
    nm = NodeModel(model)
    # The numpy node model must equal the torch model it was built from.
    tokens = np.array([encode(xs) for xs in input_space(spec)])
    with torch.no_grad():
        assert np.abs(nm.run(tokens)[0] - model(torch.tensor(tokens)).numpy()).max() < 1e-9

    gt = derive_ground_truth(nm, spec, encode)
    examples = []
    for xs in input_space(spec)[:: max(1, len(input_space(spec)) // 5)][:5]:
        raw = assembled.forward(assembled.params, jax.numpy.array([encode(xs)]))
        resid = np.asarray(raw.transformer_output.output[0], dtype=np.float64)
        vals = resid @ model.named_weights()["unembed.W_U"].double().numpy()
        examples.append({
            "input": [_jsonable(x) for x in xs],
            "tokens": encode(xs),
            "output": [_jsonable(v) for v in spec.reference([x for x in xs if x != PAD])],
            "raw": np.round(vals, 6).tolist(),
        })  # fmt: skip
    output = (
        {"kind": "numerical", "dims": 1}
        if spec.numerical
        else {"kind": "categorical", "vocab": [_jsonable(v) for v in _out_vocab(assembled)]}
    )
    meta = {
        "name": f"tracr-{name.replace('_', '-')}",
        "program": text,
        "input_vocab": input_vocab,
        "bos": BOS,
        "pad": PAD,
        "max_seq_len": spec.max_seq_len,
        "input_space": spec.inputs,
        "output": output,
        "compiled_with": "tracr-pypi (compile_rasp_to_model, causal=False, mlp_exactness=100)",
        "check_vs_tracr": diffs,
        "examples": examples,
        "ground_truth": gt,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    model_f32 = model.float()
    save_tiny(model_f32, out_dir / name, meta=meta)
    meta["config"] = {k: getattr(model.cfg, k) for k in ("n_layers", "n_heads", "d_model")}
    # The saved file reloads to the same outputs.
    loaded, _ = load_tiny(out_dir / name)
    with torch.no_grad():
        assert torch.allclose(loaded(torch.tensor(tokens)), model_f32(torch.tensor(tokens)))
    return meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", default=list(SPECS), help="programs to compile (default: all)")
    ap.add_argument("--out", type=Path, default=tasks.ZOO_DIR)
    args = ap.parse_args()
    for name in args.names:
        meta = compile_one(name, args.out)
        gt = meta["ground_truth"]
        c = meta["config"]
        cfg_line = f" L={c['n_layers']} H={c['n_heads']} d={c['d_model']}"
        print(
            f"{name:12s}{cfg_line} full={gt['n_full_graph_edges']} structural={len(gt['structural'])} "
            + " ".join(
                f"{a}: gt={len(gt[a]['edges'])} inert={len(gt[a]['inert'])} "
                f"acdc_ok={gt[a]['acdc_on_task_data_matches']}"
                for a in ("zero", "resample")
            )
        )


if __name__ == "__main__":
    main()
