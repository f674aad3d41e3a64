"""Hooks an architecture never fires, emulated from the model's own modules.

The engine reads each head's input (``hook_{q,k,v}_input``, one residual stream per head,
before LayerNorm), each head's result (``attn.hook_result``) and each MLP's input before
its norm (``hook_mlp_in``). TransformerBridge fires all three for most architectures, not
for all (checked on transformer_lens 4.3):

* **per-head inputs** (OPT, GPT-J, GPT-Neo: ``set_use_split_qkv_input`` is not
  implemented for their attention; BLOOM: its ``hook_q_input`` is taken after the norm,
  where an edge's contribution cannot be subtracted): the residual stream entering the attention is read at
  ``blocks.L.ln1.hook_in``; each head's input is that stream, patched per head by the
  engine, and its query (key, value) is computed from it with the block's own ``ln1`` and
  the head's slice of ``W_Q`` (``W_K``, ``W_V``) plus bias, then written into
  ``attn.hook_q`` (``hook_k``, ``hook_v``), which the model goes on from (rotary
  embeddings, ALiBi and the softmax stay the model's own);
* **per-head results** (the same three: ``set_use_attn_result`` is not implemented): head
  ``h``'s result is ``hook_z[..., h, :] @ W_O[h]``; the output bias ``b_O`` belongs to no
  head, as with the bridge's own results;
* **the MLP's input of a sequential block** whose bridge does not fire ``hook_mlp_in``
  (BLOOM): the same stream is the input of the MLP's norm, ``blocks.L.ln2.hook_in``;
* **the MLP's input of a parallel block that shares one norm** (Phi-1/2, Falcon, GPT-J:
  attention and MLP both read ``ln1(resid_pre)``, so there is no pre-norm MLP input to
  fire): the stream is read at ``blocks.L.ln1.hook_in``, patched by the engine and
  normalised again with ``ln1`` at ``blocks.L.mlp.hook_in``. ``ln1.hook_in`` itself is
  never written, so the attention (which reads its own per-head inputs) is unaffected.

* **query/key norms over all heads at once** (OLMo 2: ``q_norm`` of width heads x d_head):
  in the model one head's query input moves every head's query; the norm's output
  (``attn.q_norm.hook_out``, ``k_norm``) is replaced by the norm applied to each head's own
  input (:meth:`Emulator.head_norm`), so a head's query depends on its own edges only.

:func:`missing_hooks` finds out, with one forward pass of three tokens, which hooks
a model does not fire; :class:`Emulator` computes the replacements. Nothing here is
trusted blindly: the hook check (:func:`circuitdag.models.check.check_hooks`) runs the
model through the emulated hooks and compares with its own outputs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitdag.components import plain_module
from circuitdag.graph import Input, ModelSpec
from circuitdag.postnorm import RMSNorm


@dataclass(frozen=True)
class Missing:
    """Which hooks the engine needs a model does not fire (see the module docstring)."""

    split_inputs: bool = False  # hook_{q,k,v}_input (or taken after the norm, BLOOM)
    results: bool = False  # attn.hook_result
    mlp_in: bool = False  # hook_mlp_in (parallel blocks sharing ln1)
    mlp_in_at_norm: bool = False  # hook_mlp_in of a sequential block (BLOOM): read at ln2.hook_in instead
    head_norms: bool = False  # query/key norms over all heads at once (OLMo 2): applied to each head's own input

    @property
    def any(self) -> bool:
        return self.split_inputs or self.results or self.mlp_in or self.mlp_in_at_norm or self.head_norms

    def describe(self) -> list[str]:
        """What is emulated, in words (for the log and the run record)."""
        return [what for flag, what in ((self.split_inputs, "per-head q/k/v inputs"),
                                        (self.results, "per-head results from hook_z and W_O"),
                                        (self.mlp_in, "the MLP's input re-normalised with ln1"),
                                        (self.mlp_in_at_norm, "the MLP's input read at ln2.hook_in"),
                                        (self.head_norms, "query/key norms over all heads, per head"))
                if flag]  # fmt: skip


_PROBED: weakref.WeakKeyDictionary[Any, Missing] = weakref.WeakKeyDictionary()
_PROBE = {"split_inputs": "blocks.0.hook_q_input", "results": "blocks.0.attn.hook_result",
          "mlp_in": "blocks.0.hook_mlp_in"}  # fmt: skip


def missing_hooks(model: Any, spec: ModelSpec) -> Missing:
    """Which of the engine's hooks the TransformerBridge ``model`` does not fire (a forward
    pass on 3 tokens per hook, remembered per model; other models fire them all). A hook the
    model does not even list counts as not firing."""
    if not hasattr(model, "original_model"):  # not a bridge: the project's own model fires every hook
        return Missing()
    hit = _PROBED.get(model)
    if hit is not None:
        return hit
    have = getattr(model, "hook_dict", {})
    fired: dict[str, Tensor] = {}

    def seen(x: Tensor, hook: Any) -> None:
        fired[hook.name] = x.detach()

    device = next(model.parameters()).device
    stream = "blocks.0.ln1.hook_in"
    for key, name in _PROBE.items():
        if name not in have or (key == "mlp_in" and spec.attn_only):
            continue
        hooks = [(name, seen)] + ([(stream, seen)] if key == "split_inputs" and stream in have else [])
        try:  # a bridge refuses a hook it has switched off (split q/k/v inputs): it does not fire
            with torch.no_grad():
                model.run_with_hooks(torch.arange(3, device=device)[None], fwd_hooks=hooks)
        except ValueError:
            pass
    q_in, pre = fired.get(_PROBE["split_inputs"]), fired.get(stream)
    if q_in is not None and pre is not None and not torch.allclose(q_in, pre.unsqueeze(2).expand_as(q_in)):
        del fired[_PROBE["split_inputs"]]  # taken after the norm (BLOOM): no edge can be patched there
    missing = Missing(**{key: name not in fired for key, name in _PROBE.items()})
    if spec.attn_only or not spec.parallel_attn_mlp:  # a sequential block's MLP input is its norm's input
        missing = Missing(missing.split_inputs, missing.results, False, missing.mlp_in and not spec.attn_only)
    if _cross_head_norm(model.blocks[0].attn, "q_norm") is not None:
        missing = Missing(missing.split_inputs, missing.results, missing.mlp_in, missing.mlp_in_at_norm, True)
    _PROBED[model] = missing
    return missing


class Emulator:
    """The replacements of the hooks ``missing`` names, from ``model``'s own modules and
    weights (module docstring). ``project`` is differentiable, so gradient methods see
    through it."""

    def __init__(self, model: Any, spec: ModelSpec, missing: Missing) -> None:
        self.spec, self.missing = spec, missing
        # No ln1 (OLMo 2 normalises only after its sublayers): the heads read the stream itself.
        self._ln1 = [plain_module(b.ln1) if hasattr(b, "ln1") else None for b in model.blocks]
        self._W: list[dict[str, Tensor | None]] = []
        self._head_norms: list[dict[Input, RMSNorm]] = []
        for L in range(spec.n_layers):
            attn = model.blocks[L].attn
            self._W.append({name: _param(attn, name) for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")})
            if missing.head_norms:
                norms = {kind: _cross_head_norm(attn, name) for kind, name in ((Input.Q, "q_norm"), (Input.K, "k_norm"))}
                self._head_norms.append({kind: RMSNorm.of(n) for kind, n in norms.items() if n is not None})

    def norm1(self, L: int, x: Tensor) -> Tensor:
        """Block ``L``'s first norm (the attention's; the MLP's too in a shared-norm block)."""
        ln1 = self._ln1[L]
        return x if ln1 is None else ln1(x)

    def head_norm(self, L: int, kind: Input, x: Float[Tensor, "batch pos heads d_model"]) -> Tensor | None:
        """OLMo 2's query (``kind`` Q) or key norm, taken over all heads at once, applied to
        each head's own input: head ``h``'s query is slice ``h`` of ``norm(x_h W_Q + b_Q)``
        with ``x_h W_Q`` the projection of head ``h``'s input by *every* head's ``W_Q``. On an
        unpatched run (every head reads one stream) that is the model's own query; in a
        patched one a head's query depends on its own input only, as its edges say.
        Returns ``batch pos (heads d_head)``, as ``attn.q_norm.hook_out`` holds it; None
        where the model has no such norm for ``kind``."""
        norm = self._head_norms[L].get(kind) if self._head_norms else None
        if norm is None:
            return None
        W, b = self._W[L][f"W_{'Q' if kind == Input.Q else 'K'}"], self._W[L][f"b_{'Q' if kind == Input.Q else 'K'}"]
        assert W is not None
        full = torch.einsum("bphd,ide->bphie", self.norm1(L, x), W)  # every head's projection of each input
        if b is not None:
            full = full + b
        B, P, H, _, E = full.shape
        normed = norm(full.reshape(B, P, H, H * E)).reshape(B, P, H, H, E)
        own = torch.arange(H, device=x.device)
        return normed[:, :, own, own].reshape(B, P, H * E)

    def project(self, L: int, kind: Input, x: Float[Tensor, "batch pos heads d_model"]) -> Tensor:
        """Each head's query (``kind`` Q), key or value from its own residual stream ``x``
        (before ``ln1``): ``batch pos heads d_head``, as ``attn.hook_q/k/v`` hold them."""
        w = self._W[L]
        which = {Input.Q: "Q", Input.K: "K", Input.V: "V"}[kind]
        W, b = w[f"W_{which}"], w[f"b_{which}"]
        if W is None:
            raise ValueError(f"blocks.{L}.attn has no W_{which}")
        out = torch.einsum("bphd,hde->bphe", self.norm1(L, x), W)
        return out + b if b is not None else out

    def result(self, L: int, z: Float[Tensor, "batch pos heads d_head"]) -> Float[Tensor, "batch pos heads d_model"]:
        """Each head's write to the residual stream, ``z_h @ W_O[h]`` (no ``b_O``)."""
        W_O = self._W[L]["W_O"]
        if W_O is None:
            raise ValueError(f"blocks.{L}.attn has no W_O")
        return torch.einsum("bphe,hed->bphd", z, W_O)


def _cross_head_norm(attn: Any, name: str) -> Any:
    """The attention's ``q_norm``/``k_norm`` (Hugging Face's module) when it spans all
    heads at once (OLMo 2: width heads x d_head), else None (none, or per head as Qwen3's)."""
    norm = plain_module(getattr(attn, name)) if hasattr(attn, name) else None
    weight = getattr(norm, "weight", None)
    W_Q = _param(attn, "W_Q")
    if not isinstance(weight, Tensor) or W_Q is None or weight.numel() <= W_Q.shape[-1]:
        return None
    return norm


def _param(module: Any, name: str) -> Tensor | None:
    try:
        value = getattr(module, name)
    except AttributeError:  # a bridge raises for bias-free projections
        return None
    return value if isinstance(value, Tensor) else None


__all__ = ["Emulator", "Missing", "missing_hooks"]
