"""The port of a tracr-compiled program into circuitdag's hooked transformer, and its checks.

:func:`port_program` compiles a RASP program with tracr (Lindner et al. 2023, "Tracr:
Compiled Transformers as a Laboratory for Interpretability") and ports the weights into
:class:`~circuitdag.models.hooked.TinyTransformer`: tracr's layer i (attention, then MLP)
becomes block i; heads and MLP widths are already padded by tracr; ``W_U`` projects the
residual stream onto the program's output directions; all biases must be zero (tracr
writes constants through a ``one`` direction). Weights are rounded to float32, the
precision written, before any check.

:func:`check_port` compares the port with tracr's own run and its RASP evaluator,
:func:`check_node_model` the numpy model of :mod:`circuitdag.tracr_truth` with the torch
model, and :func:`probes` builds the ground-truth probes; each failure is a
:class:`~circuitdag.tracr_truth.TracrCheckError` with a one-line reason. The command
around them is :mod:`circuitdag.tracr_compile`.

JAX, haiku and tracr are imported only inside :func:`port_program` (the ``tracr`` extra).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from circuitdag.errors import ConfigError, MissingExtraError
from circuitdag.models.hooked import TinyConfig, TinyTransformer
from circuitdag.tasks.tracr import BOS, PAD
from circuitdag.tracr_truth import NodeModel, Probe, TracrCheckError, make_probe

Value = Any
#: Counterfactuals per clean input when deriving the resample ground truth.
N_RESAMPLE_SEEDS = 4
COMPILE_OPTIONS = {"causal": False, "mlp_exactness": 100, "compiler_bos": BOS, "compiler_pad": PAD}

# --------------------------------------------------------------------------- the port


@dataclass
class Port:
    """A compiled program and its port.

    ``model``: float64 TinyTransformer holding the float32-rounded weights;
    ``input_vocab``: token id -> value (with ``BOS`` and ``PAD``); ``output``:
    ``{"kind": "numerical", "dims": 1}`` or ``{"kind": "categorical", "vocab": [...]}``
    (output index -> value); ``assembled``: tracr's ``AssembledTransformerModel``.
    """

    program: Any
    assembled: Any
    model: TinyTransformer
    input_vocab: list[Value]
    output: dict[str, Any]

    @property
    def numerical(self) -> bool:
        return self.output["kind"] == "numerical"

    def encode(self, xs: Sequence[Value]) -> list[int]:
        """Token ids of ``[BOS, *xs]``."""
        enc = self.assembled.input_encoder.encoding_map
        return [enc[BOS]] + [enc[x] for x in xs]

    _jitted: Any = field(default=None, init=False, repr=False, compare=False)

    def tracr_forward(
        self, tokens: np.ndarray, jit: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """tracr's own run on ``tokens`` (batch pos): input embedding (batch pos d_model),
        raw output-space values (batch pos d_out) and decoded output ids or numbers (batch pos).

        ``jit``: tracr's forward compiled by ``jax.jit`` as one program per input shape;
        ``False`` runs it as tracr does, op by op, which compiles each of its ~90 primitives
        again for every new batch shape (1.6 s against 0.45 s per shape for a 4-layer
        program, CPU; outputs equal to float32 rounding, 3e-8)."""
        import jax
        import jax.numpy as jnp

        forward = self.assembled.forward
        if jit:
            if self._jitted is None:
                self._jitted = jax.jit(forward)
            forward = self._jitted
        ref = forward(self.assembled.params, jnp.array(tokens))
        resid = np.asarray(ref.transformer_output.output, dtype=np.float64)
        raw = resid @ self.model.named_weights()["unembed.W_U"].double().cpu().numpy()
        emb = np.asarray(ref.transformer_output.input_embeddings, dtype=np.float64)
        return emb, raw, np.asarray(ref.unembedded_output)


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _import_tracr() -> tuple[Any, Any]:
    """(tracr.compiler.compiling, tracr.rasp.rasp), with JAX on the CPU."""
    try:
        import jax

        jax.config.update("jax_platforms", "cpu")
        from tracr.compiler import compiling
        from tracr.rasp import rasp
    except ImportError as exc:
        raise MissingExtraError(
            f"compiling RASP programs needs tracr and JAX ({exc}); install the extra: pip install 'circuitdag[tracr]'"
        ) from exc
    return compiling, rasp


def port_program(program: Any, vocab: Sequence[Value], max_seq_len: int, name: str = "tracr") -> Port:
    """Compile the RASP ``program`` with tracr (``compile_rasp_to_model``, BOS ``"BOS"``,
    PAD ``"PAD"``, non-causal, ``mlp_exactness=100``) for inputs over ``vocab`` of length
    at most ``max_seq_len`` (BOS excluded), and copy its weights into a TinyTransformer.

    Raises :class:`~circuitdag.errors.ConfigError` when tracr cannot compile the program,
    :class:`TracrCheckError` when a compiled bias is non-zero, and
    :class:`~circuitdag.errors.MissingExtraError` without the ``tracr`` extra.
    """
    compiling, rasp = _import_tracr()
    if not isinstance(program, rasp.SOp):
        raise ConfigError(f"expected a RASP program (a tracr.rasp.rasp.SOp), got {type(program).__name__}")
    try:
        assembled = compiling.compile_rasp_to_model(program, vocab=set(vocab), max_seq_len=max_seq_len,
                                                    **COMPILE_OPTIONS)  # fmt: skip
    except Exception as exc:  # tracr raises many kinds; report them in one line
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # one line, all of it
        raise ConfigError(f"tracr cannot compile {name}: {type(exc).__name__}: {reason}") from exc
    numerical = bool(rasp.is_numerical(program))
    if numerical:
        output: dict[str, Any] = {"kind": "numerical", "dims": 1}
    else:
        enc = assembled.output_encoder.encoding_map
        output = {
            "kind": "categorical",
            "vocab": [_jsonable(v) for v, _ in sorted(enc.items(), key=lambda kv: kv[1])],
        }
    enc_in = assembled.input_encoder.encoding_map
    input_vocab = [_jsonable(v) for v, _ in sorted(enc_in.items(), key=lambda kv: kv[1])]
    model = _to_tiny(assembled, program.label, output, name)
    return Port(program, assembled, model, input_vocab, output)


def _to_tiny(assembled: Any, label: str, output: dict[str, Any], name: str) -> TinyTransformer:
    """Copy tracr's haiku parameters into a TinyTransformer (float64, float32-rounded)."""
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
    if output["kind"] == "numerical":
        out_dirs = [labels.index(label)]
    else:
        out_dirs = [labels.index(f"{label}:{v}") for v in output["vocab"]]
    W_U = np.zeros((d_model, len(out_dirs)))
    for j, d in enumerate(out_dirs):
        W_U[d, j] = 1.0
    cfg = TinyConfig(
        n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_head, d_vocab=d_vocab,
        n_ctx=W_pos.shape[0], d_mlp=d_mlp, d_vocab_out=len(out_dirs), act_fn="relu",
        normalization=None, causal=False, model_name=name,
    )  # fmt: skip
    model = TinyTransformer(cfg).to(torch.float64)
    sd = {"W_E": W_E, "W_pos": W_pos, "W_U": W_U, "b_U": np.zeros(len(out_dirs))}

    def heads_in(w: np.ndarray) -> np.ndarray:  # (d_model, heads*d_head) -> (heads, d_model, d_head)
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
            raise TracrCheckError(
                f"{name}: tracr bias {k} is non-zero; the ground-truth model assumes zero biases"
            )
    missing, unexpected = model.load_state_dict({k: torch.tensor(v) for k, v in sd.items()}, strict=False)
    if unexpected or [k for k in missing if not k.endswith((".w", ".b"))]:
        raise TracrCheckError(f"{name}: tracr's parameters do not fit the model ({missing}, {unexpected})")
    # Round-trip through float32, the precision that is written, so that everything
    # below (checks and ground truth) uses exactly the written weights.
    model.float().double()
    return model


# --------------------------------------------------------------------------- the checks


def check_port(
    port: Port, inputs: Sequence[Sequence[Value]], name: str = "tracr",
    reference: Callable[[list[Value]], list[Value]] | None = None,
) -> tuple[dict[str, float], list[list[Value]]]:  # fmt: skip
    """Check the port on ``inputs`` (sequences of one token length, BOS excluded, ``PAD``
    at the end allowed) against tracr (module docstring). Returns the largest differences
    ``{"embed": ..., "output": ...}`` and the program's outputs per input (RASP evaluation,
    ``PAD`` positions left out). ``reference``: a plain-Python version of the program to
    check as well. Raises :class:`TracrCheckError` on the first failure."""
    _, rasp = _import_tracr()
    tokens = np.array([port.encode(xs) for xs in inputs])
    emb0, theirs_raw, theirs_dec = port.tracr_forward(tokens)
    cache: dict[str, torch.Tensor] = {}
    port.model.add_hook("blocks.0.hook_resid_pre", lambda t, hook: cache.__setitem__("r0", t.detach()))
    try:
        with torch.no_grad():
            ours = port.model(torch.tensor(tokens)).numpy()
    finally:
        port.model.reset_hooks()
    mask = np.array([[False] + [x != PAD for x in xs] for xs in inputs])
    d_emb = float(np.abs(cache["r0"].numpy() - emb0).max())
    d_raw = float(np.abs(ours - theirs_raw)[mask].max())
    if d_emb > 1e-6 or d_raw > 1e-3:
        raise TracrCheckError(f"{name}: the ported model differs from tracr's (embedding by {d_emb:.3g}, "
                              f"output by {d_raw:.3g})")  # fmt: skip
    if port.numerical:
        d_dec = float(np.abs(ours[..., 0] - theirs_dec)[mask].max())
        if d_dec > 1e-3:
            raise TracrCheckError(
                f"{name}: the ported model's numerical output differs from tracr's by {d_dec:.3g}"
            )
        decoded = ours[..., 0]
    else:
        bad = (ours.argmax(-1) != theirs_dec) & mask
        if bad.any():
            i = int(np.argwhere(bad)[0, 0])
            raise TracrCheckError(
                f"{name}: the ported model's decoded output differs from tracr's on {list(inputs[i])}"
            )
        decoded = ours.argmax(-1)
    outputs = []
    for xs, row in zip(inputs, decoded):
        xs = [x for x in xs if x != PAD]
        want = [_jsonable(v) for v in rasp.evaluate(port.program, xs)]
        if any(v is None for v in want):
            raise TracrCheckError(f"{name}: the program's output on {xs} is {want}: an Aggregate selects nothing "
                                  "(leave such inputs out with --inputs; a numerical Aggregate may also take "
                                  "default=0, a categorical one only None)")  # fmt: skip
        got = [float(v) if port.numerical else port.output["vocab"][int(v)] for v in row[1 : 1 + len(want)]]
        ok = np.allclose(got, want, atol=1e-3) if port.numerical else got == want
        if not ok:
            raise TracrCheckError(f"{name}: the compiled model outputs {got} on {xs} but tracr's RASP evaluation "
                                  f"gives {want} (tracr compiles this program inexactly on this input)")  # fmt: skip
        if reference is not None:
            ref = list(reference(xs))
            if not (np.allclose(ref, want, atol=1e-3) if port.numerical else ref == want):
                raise TracrCheckError(
                    f"{name}: the reference gives {ref} on {xs} but tracr's RASP evaluation {want}"
                )
        outputs.append(want)
    return {"embed": d_emb, "output": d_raw}, outputs


def check_node_model(port: Port, tokens: np.ndarray, name: str = "tracr") -> NodeModel:
    """The numpy model of the ground truth, checked equal to the torch model on ``tokens``."""
    nm = NodeModel(port.model)
    with torch.no_grad():
        diff = float(np.abs(nm.run(tokens)[0] - port.model(torch.tensor(tokens)).numpy()).max())
    if not diff < 1e-9:
        raise TracrCheckError(f"{name}: the ground-truth model differs from the ported model by {diff:.3g}")
    return nm


def examples(
    port: Port, inputs: Sequence[Sequence[Value]], outputs: Sequence[Sequence[Value]], n: int = 5
) -> list[dict[str, Any]]:
    """``n`` inputs spread over ``inputs``, with the program's ``outputs`` and tracr's raw
    output values (tests compare the written model with them)."""
    step = max(1, len(inputs) // n)
    picked = list(zip(inputs, outputs))[::step][:n]
    _, raw, _ = port.tracr_forward(np.array([port.encode(xs) for xs, _ in picked]))
    return [{"input": [_jsonable(x) for x in xs], "tokens": port.encode(xs), "output": [_jsonable(v) for v in ys],
             "raw": np.round(r, 6).tolist()} for (xs, ys), r in zip(picked, raw)]  # fmt: skip


def probes(nm: NodeModel, port: Port, space: Sequence[list[Value]], pairs: Callable[..., Any],
           n_task: int) -> tuple[dict[str, Probe], dict[str, Probe]]:  # fmt: skip
    """(ground-truth probes, task-data probes) per ablation on ``space``. ``pairs(seed,
    n_max)`` gives (clean, counterfactual) inputs; the ground truth uses all of ``space``
    with :data:`N_RESAMPLE_SEEDS` counterfactuals each, the task data ``n_task`` pairs of
    seed 0 (what the task's ``data(seed=0)`` gives)."""

    def tok(xss: Sequence[Sequence[Value]]) -> np.ndarray:
        return np.array([port.encode(xs) for xs in xss])

    def answer_mask(xss: Sequence[Sequence[Value]]) -> np.ndarray:
        return np.array([[False] + [x != PAD for x in xs] for xs in xss])

    def probe(ablation: str, seeds: Iterable[int], n_max: int | None) -> Probe:
        clean: list[list[Value]] = []
        corr: list[list[Value]] = []
        for seed in seeds:
            c, r = pairs(seed, n_max)
            clean += c
            corr += r
        return make_probe(nm, tok(clean), answer_mask(clean), None if ablation == "zero" else tok(corr))

    truth = {"zero": probe("zero", [0], None), "resample": probe("resample", range(N_RESAMPLE_SEEDS), None)}
    task = {"zero": probe("zero", [0], n_task), "resample": probe("resample", [0], n_task)}
    return truth, task
