"""One attention head or one MLP evaluated on its own, from its inputs.

The sparse fast path of ACDC (:mod:`circuitdag.recompute`) recomputes only the
components a candidate circuit changes. A model's blocks compute all heads of a layer at
once; :class:`ComponentKernels` computes a chosen set of heads (or one MLP) from their
own inputs, which in a patched pass differ from head to head:

* a head's result (``blocks.L.attn.hook_result[:, :, h]``) from its query input and the
  key/value inputs of its key/value head, each a residual stream taken before LayerNorm
  (``hook_q_input`` / ``hook_k_input`` / ``hook_v_input``): LayerNorm, the head's
  ``W_Q``/``W_K``/``W_V`` (+ biases), rotary embeddings (the model's own ``cos``/``sin``,
  captured from its rotary hooks), causal (or, for tracr, unmasked) softmax attention and
  ``W_O``;
* an MLP's output (``hook_mlp_out``) from ``hook_mlp_in``: the block's own ``ln2`` and
  ``mlp`` modules.

Nothing here is trusted blindly: :meth:`ComponentKernels.verify` recomputes every head and
MLP of the clean run and compares with the model's hooks; a model on which any component
differs (an architecture these kernels do not know) is refused with the reason, and ACDC
falls back to its layer-by-layer fast path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.graph import ModelSpec

#: The kernels' (and the readout's) matrix products run on a multiple of this many rows.
ROW_BLOCK = 16


def whole_blocks(rows: Tensor) -> Tensor:
    """``rows`` (``m ...``) padded along its first dimension, with copies of its first row,
    to a multiple of :data:`ROW_BLOCK` rows; cut the product back to ``m`` rows.

    A BLAS computes the rows of a matrix product in blocks of a few (float64 here: 4) and
    the rows of a last, partial block with another kernel that rounds differently; the fast
    paths' products have ``K x batch`` rows, so without this a candidate's value would
    depend on the batch size K (tests/test_acdc_determinism.py). Whole blocks only: at most
    15 extra rows."""
    pad = -rows.shape[0] % ROW_BLOCK
    return rows if not pad else torch.cat([rows, rows[:1].expand(pad, *rows.shape[1:])])


class KernelMismatch(Exception):
    """The kernels do not reproduce the model's own computation (message says where)."""


def plain_module(module: Any) -> Any:
    """The module a ``TransformerBridge`` component wraps (its Hugging Face original,
    called without the bridge's hook bookkeeping), or ``module`` itself."""
    inner = getattr(module, "original_component", None)
    return inner if isinstance(inner, torch.nn.Module) else module


def mlp_norm(block: Any) -> Any:
    """The norm in front of a block's MLP: ``ln2``, or ``ln1`` in a parallel block whose
    attention and MLP share one norm (Phi-1/2, Falcon, GPT-J)."""
    return plain_module(block.ln2 if "ln2" in getattr(block, "_modules", {}) or hasattr(block, "ln2") else block.ln1)


def _param(module: Any, name: str) -> Tensor | None:
    try:
        value = getattr(module, name)
    except AttributeError:  # a bridge raises for bias-free projections
        return None
    return value if isinstance(value, Tensor) else None


class ComponentKernels:
    """Per-head and per-MLP evaluation of ``model`` (a ``TinyTransformer`` or a
    ``TransformerBridge``); see the module docstring.

    ``rotary`` maps a layer to its ``(cos, sin)`` (``1 pos rotary_dim``, Hugging Face's
    rotate-half convention), captured from ``blocks.L.attn.hook_cos``/``hook_sin``; empty
    for models without rotary embeddings.
    """

    def __init__(
        self, model: Any, spec: ModelSpec, rotary: dict[int, tuple[Tensor, Tensor]] | None = None,
        neurons: dict[int, NeuronKernel] | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.rotary = rotary or {}
        #: The dtype the softmax is computed in (None: the scores'). Hugging Face's eager
        #: attention of Llama-family models computes it in float32 whatever the model's dtype
        #: (``softmax(..., dtype=torch.float32)``); :meth:`verify` finds out which.
        self.softmax_dtype: torch.dtype | None = None
        if spec.n_layers and getattr(model.blocks[0], "ln1_post", None) is not None:
            raise KernelMismatch("post-sublayer norms: a head changes its layer's normalised sum for every reader, "
                                 "which the per-component recomputation does not model")  # fmt: skip
        cfg = model.cfg
        d_head = int(cfg.d_head)
        scale = float(getattr(cfg, "attn_scale", -1.0) or -1.0)
        self.scale = 1.0 / (scale if scale > 0 else math.sqrt(d_head))
        self.W: list[dict[str, Tensor | None]] = []
        for L in range(spec.n_layers):
            attn = model.blocks[L].attn
            self.W.append(
                {name: _param(attn, name) for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")}
            )
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                if self.W[L][name] is None:
                    raise KernelMismatch(f"blocks.{L}.attn has no {name}")
        self._ln1 = [plain_module(model.blocks[L].ln1) for L in range(spec.n_layers)]
        #: Per-head query/key norms (Qwen3: an RMSNorm over d_head), by "Q"/"K"; norms over
        #: all heads at once (OLMo 2) are not per-component and are refused.
        self._qk_norms: list[dict[str, Any]] = []
        for L in range(spec.n_layers):
            attn, found = model.blocks[L].attn, {}
            for which, name in (("Q", "q_norm"), ("K", "k_norm")):
                norm = plain_module(getattr(attn, name)) if hasattr(attn, name) else None
                weight = getattr(norm, "weight", None)
                if isinstance(weight, Tensor):
                    if weight.numel() != int(cfg.d_head):
                        raise KernelMismatch(f"blocks.{L}.attn.{name} spans all heads at once")
                    found[which] = norm
            self._qk_norms.append(found)
        if not spec.attn_only:
            self._ln2 = [mlp_norm(model.blocks[L]) for L in range(spec.n_layers)]
            self._mlp = [plain_module(model.blocks[L].mlp) for L in range(spec.n_layers)]
        #: The MLPs split into neurons (``spec.neuron_layers``); ``neurons`` passes kernels
        #: already built (the Patcher's).
        self.neurons = neurons if neurons is not None else {L: NeuronKernel(model, L) for L in spec.neuron_layers}

    # ------------------------------------------------------------------ attention
    def norm1(self, L: int, x: Tensor) -> Tensor:
        """The attention's LayerNorm (RMSNorm) of block ``L``."""
        return self._ln1[L](x)

    def _project(self, L: int, which: str, x: Tensor, heads: Tensor, normed: bool = False,
                 pos: Tensor | None = None) -> Tensor:  # fmt: skip
        """``x`` (``n pos d_model``, before LayerNorm; after it with ``normed``) through
        LayerNorm and the ``which`` projection of ``heads`` -> ``n pos heads d_head``
        (rotated for q and k). ``pos``: the absolute positions of ``x``'s rows when they
        are not ``0 .. n_pos-1`` (for the rotary angles)."""
        w = self.W[L]
        ln = x if normed else self.norm1(L, x)
        n, p, d = ln.shape
        flat = whole_blocks(ln.reshape(n * p, d))
        out = torch.einsum("md,hde->mhe", flat, w[f"W_{which}"][heads])[: n * p]  # type: ignore[index]
        out = out.reshape(n, p, *out.shape[1:])
        b = w[f"b_{which}"]
        if b is not None:
            out = out + b[heads]
        norm = self._qk_norms[L].get(which) if which != "V" else None
        if norm is not None:  # per-head query/key norm (Qwen3), before the rotation
            out = norm(out)
        if which != "V" and L in self.rotary:
            cos, sin = self.rotary[L]
            if pos is not None:
                cos, sin = cos[:, pos], sin[:, pos]
            out = self._rotate(out, cos, sin)
        return out

    @staticmethod
    def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        r = cos.shape[-1]
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # pos 1 r
        rot, rest = x[..., :r], x[..., r:]
        half = r // 2
        turned = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = rot * cos.to(x.dtype) + turned * sin.to(x.dtype)
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out

    def queries(self, L: int, heads: Sequence[int], x: Float[Tensor, "n pos d_model"],
                pos: Tensor | None = None) -> Tensor:  # fmt: skip
        """Rotated queries of ``heads`` from one shared query input: ``n pos heads d_head``
        (``pos``: absolute positions of ``x``'s rows, default all)."""
        return self._project(L, "Q", x, torch.as_tensor(list(heads), device=x.device), pos=pos)

    def keys_values(
        self, L: int, kv: int, xk: Tensor, xv: Tensor, pos: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rotated keys and values of key/value head ``kv``: two ``n pos d_head``."""
        g = torch.as_tensor([kv], device=xk.device)
        nk = self.norm1(L, xk)
        nv = nk if xv is xk else self.norm1(L, xv)
        return self._project(L, "K", nk, g, True, pos)[:, :, 0], self._project(L, "V", nv, g, True, pos)[
            :, :, 0
        ]

    def attend(
        self, L: int, heads: Sequence[int], q: Float[Tensor, "n q heads d_head"],
        k: Float[Tensor, "n k heads d_head"], v: Float[Tensor, "n k heads d_head"],
        q_pos: Tensor | None = None, k_pos: Tensor | None = None,
    ) -> Float[Tensor, "n q heads d_model"]:  # fmt: skip
        """Each head's result (its write to the residual stream, ``hook_result``) at the
        query positions ``q_pos`` (default all), attending to keys at ``k_pos``."""
        scores = torch.einsum("nqhe,nkhe->nhqk", q, k) * self.scale
        if self.spec.causal:
            nq, nk = scores.shape[-2:]
            qp = torch.arange(nq, device=q.device) if q_pos is None else q_pos
            kp = torch.arange(nk, device=q.device) if k_pos is None else k_pos
            scores = scores.masked_fill(kp[None, :] > qp[:, None], float("-inf"))
        pattern = scores.softmax(-1) if self.softmax_dtype is None else scores.softmax(-1, dtype=self.softmax_dtype)
        z = torch.einsum("nhqk,nkhe->nqhe", pattern.to(v.dtype), v)
        W_O = self.W[L]["W_O"][torch.as_tensor(list(heads), device=q.device)]  # type: ignore[index]
        n, nq = z.shape[:2]
        out = torch.einsum("mhe,hed->mhd", whole_blocks(z.reshape(n * nq, *z.shape[2:])), W_O)
        return out[: n * nq].reshape(n, nq, *out.shape[1:])

    def mlp(self, L: int, x: Float[Tensor, "n pos d_model"]) -> Float[Tensor, "n pos d_model"]:
        """The MLP's output (``hook_mlp_out``) from its input (``hook_mlp_in``)."""
        flat = whole_blocks(x.reshape(-1, 1, x.shape[-1]))
        return self._mlp[L](self._ln2[L](flat))[: x.shape[:-1].numel()].reshape(x.shape)

    def neuron(self, L: int, n: int, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """Neuron ``n`` of MLP ``L``'s output (``act_n * W_out[n] + b_out / d_mlp``) from its
        input ``x`` (before ``ln2``)."""
        idx = torch.as_tensor([n], device=x.device)
        return self.neurons[L].outputs(x.unsqueeze(-2), idx * 0, idx)[..., 0, :]

    # ------------------------------------------------------------------ checks
    @torch.no_grad()
    def verify(
        self, resid_pre: Sequence[Tensor], mlp_in: Sequence[Tensor], slots: Tensor, head_slot, mlp_slots
    ) -> float:
        """Recompute every head and MLP of a run whose inputs are unpatched
        (``resid_pre[L]``, ``mlp_in[L]``: ``batch pos d_model``) and compare with its sender
        outputs ``slots`` (``batch pos slot d_model``; ``head_slot(L, h)``/``mlp_slots(L)``
        index them; an MLP split into neurons has one slot per neuron, compared one by one).
        Returns the largest difference; raises :class:`KernelMismatch` naming the first
        component that differs by more than sqrt(eps) relative.

        A float64 model is also tried with the softmax in float32 (as Hugging Face computes
        it for Llama-family models), and the closer of the two stays in use: the float64
        softmax can pass the tolerance on a model with small weights and still miss the
        model by 1e-9, which fast ACDC would carry into its scores."""
        if slots.dtype != torch.float64:
            return self._verify(resid_pre, mlp_in, slots, head_slot, mlp_slots)
        tried: dict[torch.dtype | None, float | KernelMismatch] = {}
        for dtype in (None, torch.float32):
            self.softmax_dtype = dtype
            try:
                tried[dtype] = self._verify(resid_pre, mlp_in, slots, head_slot, mlp_slots)
            except KernelMismatch as exc:
                tried[dtype] = exc
        good = {d: err for d, err in tried.items() if isinstance(err, float)}
        if not good:
            self.softmax_dtype = None
            raise tried[None]  # type: ignore[misc]
        self.softmax_dtype = min(good, key=lambda d: good[d])
        return good[self.softmax_dtype]

    def _verify(
        self, resid_pre: Sequence[Tensor], mlp_in: Sequence[Tensor], slots: Tensor, head_slot, mlp_slots
    ) -> float:
        spec, worst = self.spec, 0.0
        heads = list(range(spec.n_heads))
        for L in range(spec.n_layers):
            x = resid_pre[L]
            n = self.norm1(L, x)
            q = self._project(L, "Q", n, torch.as_tensor(heads, device=x.device), True)
            all_kv = torch.arange(spec.n_kv_heads, device=x.device)
            ks, vs = self._project(L, "K", n, all_kv, True), self._project(L, "V", n, all_kv, True)
            kvs = [(ks[:, :, g], vs[:, :, g]) for g in range(spec.n_kv_heads)]
            k = torch.stack([kvs[spec.kv_head(h)][0] for h in heads], dim=2)
            v = torch.stack([kvs[spec.kv_head(h)][1] for h in heads], dim=2)
            got = self.attend(L, heads, q, k, v)
            want = slots[:, :, head_slot(L, 0) : head_slot(L, 0) + spec.n_heads]
            worst = max(worst, _compare(got, want, f"head results of layer {L}"))
            if not spec.attn_only:
                sl = mlp_slots(L)
                if L in self.neurons:
                    got = self.neurons[L].all_outputs(mlp_in[L])
                    worst = max(worst, _compare(got, slots[:, :, sl], f"neuron outputs of MLP {L}"))
                    continue
                got = self.mlp(L, mlp_in[L])
                worst = max(worst, _compare(got, slots[:, :, sl.start], f"MLP output of layer {L}"))
        return worst


class _Hidden(Exception):
    """Raised by the capture hook of :class:`NeuronKernel` to stop the MLP once its hidden
    activations are known."""

    def __init__(self, value: Tensor) -> None:
        super().__init__("hidden activations reached")
        self.value = value


#: Output projections of Hugging Face MLPs, whose input is the hidden activation.
_OUT_PROJECTIONS = ("c_proj", "down_proj", "fc2", "dense_4h_to_h", "fc_out", "w2")


class NeuronKernel:
    """The neurons of one MLP, each evaluated from its own input (neuron nodes, see
    :mod:`circuitdag.graph`).

    A neuron ``n`` of the MLP of layer ``L`` writes ``h_n(x) * W_out[n] + b_out / d_mlp`` to the
    residual stream, where ``h(x)`` (``d_mlp``) is the MLP's hidden activation on input ``x``
    (``hook_mlp_in``, before ``ln2``): ``act(ln2(x) W_in + b_in)``, or ``act(ln2(x) W_gate) *
    (ln2(x) W_up)`` in gated MLPs such as Llama's. The hidden activation is read from the
    model's own modules (the input of the output projection, or ``mlp.hook_post``), so any
    activation function and gating is reproduced; ``W_out``'s rows and ``b_out`` are read
    off the output projection itself (``proj(e_n) - proj(0)``). The neurons of a layer sum
    to the MLP's output (checked by :meth:`verify`); splitting ``b_out`` evenly keeps that
    true under every ablation, zero ablation included.
    """

    def __init__(self, model: Any, layer: int) -> None:
        block = model.blocks[layer]
        self.layer = layer
        if getattr(block, "ln2_post", None) is not None:
            raise KernelMismatch("a post-sublayer norm follows the MLP (Gemma 2/3, OLMo 2): its neurons reach the "
                                 "residual only through the norm of their sum, which neuron nodes do not model yet")  # fmt: skip
        self.ln2 = mlp_norm(block)
        self.mlp = plain_module(block.mlp)
        site = getattr(self.mlp, "hook_post", None)
        proj = next((m for m in (getattr(self.mlp, n, None) for n in _OUT_PROJECTIONS)
                     if isinstance(m, torch.nn.Module)), None)  # fmt: skip
        if isinstance(site, torch.nn.Module) and isinstance(_param(self.mlp, "W_out"), Tensor):
            W, b = _param(self.mlp, "W_out"), _param(self.mlp, "b_out")
            self._site, self._read_input = site, False

            def project(h: Tensor) -> Tensor:
                return h @ W + (b if b is not None else 0.0)  # type: ignore[operator]
        elif proj is not None:
            self._site, self._read_input = proj, True
            project = proj
        else:
            raise KernelMismatch(f"blocks.{layer}.mlp ({type(self.mlp).__name__}) has no output "
                                 f"projection named one of {', '.join(_OUT_PROJECTIONS)} and no hook_post")  # fmt: skip
        ref = next(self.mlp.parameters())
        probe = torch.zeros(1, 1, int(model.cfg.d_model), dtype=ref.dtype, device=ref.device)
        self.d_mlp = int(self._hidden_of_normed(probe).shape[-1])
        with torch.no_grad():
            eye = torch.eye(self.d_mlp, dtype=ref.dtype, device=ref.device)
            zero = project(eye[:1] * 0)
            #: ``d_mlp d_model``: neuron ``n``'s output direction; ``d_model``: the bias.
            self.W_out: Tensor = project(eye) - zero
            self.b_out: Tensor = zero[0]

    def _hidden_of_normed(self, x: Tensor) -> Tensor:
        def grab(module, args, output=None):
            raise _Hidden(args[0] if self._read_input else output)

        handle = (self._site.register_forward_pre_hook(grab) if self._read_input
                  else self._site.register_forward_hook(grab))  # fmt: skip
        try:
            self.mlp(x)
        except _Hidden as h:
            return h.value
        finally:
            handle.remove()
        raise KernelMismatch(f"blocks.{self.layer}.mlp never reached its hidden activation")

    def hidden(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_mlp"]:
        """The MLP's hidden activations on input ``x`` (``hook_mlp_in``, before ``ln2``)."""
        shape = x.shape
        flat = whole_blocks(x.reshape(-1, 1, shape[-1]))
        return self._hidden_of_normed(self.ln2(flat))[: shape[:-1].numel()].reshape(*shape[:-1], -1)

    def outputs(
        self, x: Float[Tensor, "... groups d_model"], group_of: Tensor, neurons: Tensor | None = None
    ) -> Float[Tensor, "... n d_model"]:
        """Outputs of neurons ``neurons`` (default all, ``n`` of them), neuron ``neurons[i]``
        reading input ``x[..., group_of[i], :]``: the MLP runs once per group of neurons
        that share an input."""
        h = self.hidden(x)  # ... groups d_mlp
        idx = torch.arange(self.d_mlp, device=x.device) if neurons is None else neurons
        act = h[..., group_of, idx]  # ... n
        return act.unsqueeze(-1) * self.W_out[idx] + self.b_out / self.d_mlp

    def all_outputs(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_mlp d_model"]:
        """Every neuron's output when all read the same input ``x`` (an unpatched run)."""
        return self.outputs(x.unsqueeze(-2), torch.zeros(self.d_mlp, dtype=torch.long, device=x.device))

    @torch.no_grad()
    def verify(self, outputs: Tensor, mlp_out: Tensor) -> float:
        """The neuron outputs ``outputs`` (``... d_mlp d_model``, from :meth:`all_outputs`)
        sum to the MLP's output ``mlp_out``; raises :class:`KernelMismatch` otherwise."""
        return _compare(outputs.sum(-2), mlp_out, f"the neurons of MLP {self.layer} (summed)")


def _compare(got: Tensor, want: Tensor, what: str) -> float:
    err = (got - want).abs().max().item() if want.numel() else 0.0
    tol = torch.finfo(want.dtype).eps ** 0.5 * (1.0 + want.abs().max().item())
    if not err <= tol:
        raise KernelMismatch(f"{what} differ from the model's hooks by {err:.3g} (tolerance {tol:.3g})")
    return err
