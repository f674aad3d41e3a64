"""The project's own small hooked transformer.

Used for tracr-compiled programs (no LayerNorm, non-causal attention), the shipped zoo
models (GPT-2 architecture, pre-LayerNorm; :func:`circuitdag.models.zoo.load_zoo`) and tiny
test models. Its hook names and hook API are TransformerLens's
(:mod:`circuitdag.models.hookpoints`, plain torch: no TransformerLens import), so the
patching engine treats it exactly like a model booted through ``TransformerBridge``:

``hook_embed``, ``hook_pos_embed``, ``blocks.L.hook_resid_pre``,
``blocks.L.hook_q_input`` / ``hook_k_input`` / ``hook_v_input`` (batch pos head d_model,
taken before LayerNorm), ``blocks.L.attn.hook_q/k/v/attn_scores/pattern/z/result``,
``blocks.L.hook_attn_out``, ``blocks.L.hook_resid_mid``, ``blocks.L.hook_mlp_in``,
``blocks.L.mlp.hook_pre/post``, ``blocks.L.hook_mlp_out``, ``blocks.L.hook_resid_post``.

Weights use TransformerLens's names and shapes (``blocks.L.attn.W_Q``:
head d_model d_head, ``W_O``: head d_head d_model, ``mlp.W_in``: d_model d_mlp, ...) and
are stored as safetensors next to a JSON config (see :func:`save_tiny` / :func:`load_tiny`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from circuitdag.errors import ModelError
from circuitdag.models.hookpoints import HookedModule, HookPoint

TINY_FORMAT = "circuitdag.tinymodel/1"


@dataclass(frozen=True)
class TinyConfig:
    """Shape and behaviour of a :class:`TinyTransformer`.

    ``d_mlp == 0`` means attention-only. ``normalization`` is ``None`` (tracr) or ``"LN"``
    (pre-LayerNorm as in GPT-2). ``causal=False`` is tracr's unmasked attention.
    ``act_fn``: ``relu``, ``gelu`` (exact) or ``gelu_new`` (GPT-2's tanh approximation).
    ``default_prepend_bos``: whether prompts start with BOS (decided by the loader from the
    tokenizer, :func:`circuitdag.models.bos_decision`; models without a tokenizer: True).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int = 0
    d_vocab_out: int = -1
    act_fn: str = "relu"
    normalization: str | None = None
    causal: bool = True
    eps: float = 1e-5
    model_name: str = "tiny"
    # Fields the patching engine reads from any model's cfg.
    n_key_value_heads: int | None = None
    parallel_attn_mlp: bool = False
    default_prepend_bos: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.d_vocab_out == -1:
            object.__setattr__(self, "d_vocab_out", self.d_vocab)
        if self.act_fn not in _ACTIVATIONS:
            raise ModelError(f"act_fn must be one of {sorted(_ACTIVATIONS)}, got {self.act_fn!r}")
        if self.normalization not in (None, "LN"):
            raise ModelError(f"normalization must be None or 'LN', got {self.normalization!r}")

    @property
    def attn_only(self) -> bool:
        return self.d_mlp == 0

    @property
    def normalization_type(self) -> str | None:
        """TransformerLens's name for :attr:`normalization` (what the neuron analysis reads)."""
        return self.normalization


def _gelu_new(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu, "gelu_new": _gelu_new}


class _LayerNorm(nn.Module):
    """Pre-LN with learned scale/shift; identity when the model has no normalisation."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.enabled = cfg.normalization == "LN"
        self.eps = cfg.eps
        if self.enabled:
            self.w = nn.Parameter(torch.ones(cfg.d_model))
            self.b = nn.Parameter(torch.zeros(cfg.d_model))

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        # (x - mean) / sqrt(biased variance + eps) * w + b, in one fused kernel
        return F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps)


class _Attention(nn.Module):
    # Hook points registered by name in __init__ (declared so type checkers see modules).
    hook_q: HookPoint
    hook_k: HookPoint
    hook_v: HookPoint
    hook_attn_scores: HookPoint
    hook_pattern: HookPoint
    hook_z: HookPoint
    hook_result: HookPoint

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.zeros(h, d, dh))
        self.W_K = nn.Parameter(torch.zeros(h, d, dh))
        self.W_V = nn.Parameter(torch.zeros(h, d, dh))
        self.W_O = nn.Parameter(torch.zeros(h, dh, d))
        self.b_Q = nn.Parameter(torch.zeros(h, dh))
        self.b_K = nn.Parameter(torch.zeros(h, dh))
        self.b_V = nn.Parameter(torch.zeros(h, dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        for name in ("q", "k", "v", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(
        self,
        q_in: Float[Tensor, "batch pos head d_model"],
        k_in: Float[Tensor, "batch pos head d_model"],
        v_in: Float[Tensor, "batch pos head d_model"],
    ) -> Float[Tensor, "batch pos d_model"]:
        q = self.hook_q(torch.einsum("bphd,hde->bphe", q_in, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bphd,hde->bphe", k_in, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bphd,hde->bphe", v_in, self.W_V) + self.b_V)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        if self.cfg.causal:
            n = scores.shape[-1]
            mask = torch.ones(n, n, dtype=torch.bool, device=scores.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z(torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
        return result.sum(2) + self.b_O


class _MLP(nn.Module):
    act: Callable[[Tensor], Tensor]

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.act = _ACTIVATIONS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        return self.hook_post(self.act(pre)) @ self.W_out + self.b_out


class _Block(nn.Module):
    # Hook points registered by name in __init__ (declared so type checkers see modules).
    hook_resid_pre: HookPoint
    hook_q_input: HookPoint
    hook_k_input: HookPoint
    hook_v_input: HookPoint
    hook_attn_out: HookPoint
    hook_resid_mid: HookPoint
    hook_mlp_in: HookPoint
    hook_mlp_out: HookPoint
    hook_resid_post: HookPoint

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.ln1 = _LayerNorm(cfg)
        self.attn = _Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = _LayerNorm(cfg)
            self.mlp = _MLP(cfg)
        for name in (
            "resid_pre", "q_input", "k_input", "v_input", "attn_out", "resid_mid",
            "mlp_in", "mlp_out", "resid_post",
        ):  # fmt: skip
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        per_head = resid.unsqueeze(2).expand(-1, -1, self.cfg.n_heads, -1)
        q_in = self.ln1(self.hook_q_input(per_head.clone()))
        k_in = self.ln1(self.hook_k_input(per_head.clone()))
        v_in = self.ln1(self.hook_v_input(per_head.clone()))
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(q_in, k_in, v_in)))
        if not self.cfg.attn_only:
            mlp_in = self.hook_mlp_in(resid.clone())
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid)


class TinyTransformer(HookedModule):
    """A minimal decoder with TransformerLens hook names (see module docstring).

    ``tokenizer``: the Hugging Face tokenizer of a language model (the zoo's), None for
    tracr and test models."""

    tokenizer: Any = None
    #: True for a model converted from Hugging Face weights with TransformerLens's weight
    #: processing (the zoo's, :func:`circuitdag.models.zoo.load_zoo`); None otherwise.
    _weights_processed: bool | None = None

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.zeros(cfg.d_vocab, cfg.d_model))
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = _LayerNorm(cfg)
        self.W_U = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_vocab_out))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out))
        self.hook_embed = HookPoint()
        self.hook_pos_embed = HookPoint()
        self.setup()

    def embed(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """Token plus positional embedding: the residual stream entering block 0."""
        if tokens.shape[-1] > self.cfg.n_ctx:
            raise ModelError(
                f"sequence of {tokens.shape[-1]} tokens is longer than the model's "
                f"context of {self.cfg.n_ctx}; use shorter prompts"
            )
        pos = self.W_pos[: tokens.shape[-1]].expand(*tokens.shape, -1)  # batch pos d_model, as in TL
        return self.hook_embed(self.W_E[tokens]) + self.hook_pos_embed(pos)

    def forward(
        self,
        input: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
        start_at_layer: int | None = None,
    ) -> Float[Tensor, "batch pos d_vocab_out"]:
        """Logits. With ``start_at_layer=L``, ``input`` is the residual entering block L."""
        if start_at_layer is None:
            resid, start = self.embed(input), 0
        else:
            resid, start = input, start_at_layer
        for block in self.blocks[start:]:
            resid = block(resid)
        return self.unembed(self.ln_final(resid))

    def unembed(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab_out"]:
        """Logits from the (normalised) final residual, as TransformerBridge's ``unembed``."""
        return resid @ self.W_U + self.b_U

    def named_weights(self) -> dict[str, Tensor]:
        """Weights under TransformerLens names (``blocks.0.attn.W_Q``, ``embed.W_E``...)."""
        out: dict[str, Tensor] = {}
        for name, p in self.state_dict().items():
            out[_TO_TL.get(name, name)] = p
        return out


_TO_TL = {"W_E": "embed.W_E", "W_pos": "pos_embed.W_pos", "W_U": "unembed.W_U", "b_U": "unembed.b_U"}
_FROM_TL = {v: k for k, v in _TO_TL.items()}


def save_tiny(model: TinyTransformer, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Write ``path.safetensors`` and ``path.json`` (config + free-form ``meta``)."""
    path = Path(path)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.named_weights().items()}
    save_file(weights, str(path.with_suffix(".safetensors")))
    cfg = asdict(model.cfg)
    cfg.pop("extra")
    doc = {"format": TINY_FORMAT, "config": cfg, **(meta or {})}
    path.with_suffix(".json").write_text(json.dumps(doc, indent=1))


def load_tiny(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[TinyTransformer, dict[str, Any]]:
    """Load a model written by :func:`save_tiny`; returns it and its JSON document."""
    path = Path(path)
    cfg_file, w_file = path.with_suffix(".json"), path.with_suffix(".safetensors")
    if not cfg_file.exists() or not w_file.exists():
        raise ModelError(f"no tiny model at {path} (expected {cfg_file.name} and {w_file.name})")
    doc = json.loads(cfg_file.read_text())
    if doc.get("format") != TINY_FORMAT:
        raise ModelError(f"{cfg_file} is not a {TINY_FORMAT} file (format={doc.get('format')!r})")
    model = TinyTransformer(TinyConfig(**doc["config"]))
    state = {_FROM_TL.get(k, k): v for k, v in load_file(str(w_file)).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if not m.endswith((".w", ".b"))]:
        raise ModelError(f"{w_file}: weights do not match config (missing={missing}, unexpected={unexpected})")
    model.to(device=device, dtype=dtype).eval()
    return model, doc
