"""Head embeddings: every attention head (and MLP) of one or more models as a vector that
describes what it does on one task's inputs, so heads of different models and sizes can be
compared, mapped and matched.

The idea is the seed write-up's "attention heads embedded in a similarity space" (Alignment
Jam, interpretability hackathon 2023): describe a head by its behaviour, not its weights,
so that two models that solve a task the same way put the heads that play one role next
to each other whatever their layer, index, width or vocabulary.

Every model runs the task's clean prompts (the same underlying inputs for every model:
the task builds them from one seed) and each component is described **at the task's
answer slots** (``TaskData.answer_pos[:, j]``, slot j), which every model of a task shares
even when the token layouts differ (``reversal``: the compiled model answers slot j at
position j, the trained one at 5 + j). The features, in this order:

``attn[slot j, key k]``
    Mean attention from the query at slot j to the key position the task names ``k``
    (``TaskData.position_names``, e.g. ``bos``, ``x3``, ``sep``; ``pos{p}`` when the task
    names none). Names are the shared coordinates: a key a model lacks reads 0. This block
    holds the attention to BOS and to a separator, and, for a copying head, which input
    it reads from at each slot. Divided by ``sqrt(n_slots)`` so that the block's largest
    possible distance (``sqrt(2)``) is that of one scalar feature's range. Zero for MLPs.
``entropy``
    Mean entropy of the head's attention at the answer slots divided by ``log`` of the
    number of keys it may attend to: 0 for one-hot attention, 1 for uniform. 0 for MLPs.
``direct``
    Share of the correct answer's centred logit (``logit[c] - mean(logit)``) that the
    component writes directly: ``1 - margin(resid - out) / margin(resid)`` with the model's
    own final norm and unembedding, mean over prompts and slots, clipped to [-2, 2] (for
    numerical outputs, ``|logits - logits without it|`` / ``|logits - mean|``). This is the
    OV circuit's effect on the output, in units every model shares.
``write``
    ``|out| / |final residual|`` at the answer slots, clipped to [0, 2]: how much the
    component writes at all (an all-zero head of a tracr model writes 0).
``depth``
    ``layer / (n_layers - 1)``, times 0.5: where in the model it sits, the only
    structural feature (weighted down; it separates nothing by itself).

Relative offsets (query minus key position) are not a feature: the same role sits at
different offsets in different layouts (reversal's copy head reads offset ``2j - 6`` in
the compiled model and ``2j - 1`` in the trained one); the task's position names already
carry what the offset would.

Distances are Euclidean. :func:`match` pairs components of two models with an optimal
assignment (``scipy.optimize.linear_sum_assignment``), heads with heads and MLPs with MLPs;
:func:`project` gives the 2-D PCA map (numpy SVD), :func:`plot_map` draws it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from circuitdag import _options
from circuitdag._plotting import save_svg
from circuitdag.errors import ConfigError, TaskError
from circuitdag.files import write_json
from circuitdag.tasks.base import Task, TaskData

FORMAT = "circuitdag.heads/1"
#: Weight of the ``depth`` feature.
DEPTH_WEIGHT = 0.5
SCALARS = ("entropy", "direct", "write", "depth")
METHOD = ("behaviour at the task's answer slots on its clean prompts: mean attention from each slot to each "
          "named key position (/ sqrt(slots)), normalised attention entropy, share of the correct answer's "
          "centred logit written directly, |output| / |final residual|, 0.5 x relative depth; Euclidean "
          "distance; matching by scipy linear_sum_assignment; map by PCA (docs/compare.md)")


@dataclass(frozen=True)
class Profile:
    """What :func:`profile` measures of one model on one task's data.

    ``components`` are ``a{L}.{H}`` (every head, layer-major) then ``m{L}``, in layer
    order; ``patterns[c, j, k]`` the mean attention of component c from answer slot j to
    key position named ``key_names[k]`` (zero rows for MLPs); the scalars are per
    component (module doc)."""

    label: str
    components: list[str]
    kinds: list[str]  # "head" | "mlp"
    key_names: tuple[str, ...]
    patterns: Float[np.ndarray, "comp slot key"]
    entropy: Float[np.ndarray, " comp"]
    direct: Float[np.ndarray, " comp"]
    write: Float[np.ndarray, " comp"]
    depth: Float[np.ndarray, " comp"]
    meta: dict[str, Any] = field(default_factory=dict)


def _key_names(data: TaskData) -> tuple[str, ...]:
    n = int(data.clean.shape[1])
    return tuple(data.position_names) if data.position_names is not None else tuple(f"pos{p}" for p in range(n))


@torch.no_grad()
def profile(model: Any, data: TaskData, label: str) -> Profile:
    """Measure every head and MLP of ``model`` on the clean prompts of ``data``
    (module doc). ``label`` names the model in the embedding."""
    from circuitdag.graph import NodeKind
    from circuitdag.hooks import HookTable
    from circuitdag.models import spec_of

    spec = spec_of(model)
    n_layers, n_heads, attn_only, causal = spec.n_layers, spec.n_heads, spec.attn_only, spec.causal
    table = HookTable.of(model, spec)
    last = table.final
    cache: dict[str, torch.Tensor] = {}

    def keep(key: str, L: int = 0) -> Any:
        def fn(x: torch.Tensor, hook: Any) -> None:
            cache[key] = table.head_results(L, x) if key.endswith("hook_result") else x.detach()
        return fn

    hooks = [(last, keep(last))]
    for L in range(n_layers):  # each head's results (emulated where the model has none), its pattern, the MLP
        hooks += [(table.names.pattern.format(L=L), keep(f"blocks.{L}.attn.hook_pattern")),
                  (table.output(L, NodeKind.HEAD), keep(f"blocks.{L}.attn.hook_result", L))]  # fmt: skip
        if not attn_only:
            hooks.append((table.output(L, NodeKind.MLP), keep(f"blocks.{L}.hook_mlp_out")))
    device = next(model.parameters()).device
    model.run_with_hooks(data.clean.to(device), fwd_hooks=hooks)
    ap = data.answer_pos.to(device)
    b, n_slots = ap.shape
    rows = torch.arange(b, device=device)[:, None]
    valid = (torch.ones_like(ap, dtype=torch.bool) if data.valid is None else data.valid.to(device)).double()
    resid = cache[last][rows, ap]  # b slot d
    full = model.unembed(model.ln_final(resid)).double()
    correct = None if data.correct is None else data.correct.to(device)
    n_keys = torch.full_like(ap, data.clean.shape[1]) if not causal else ap + 1

    def mean(x: torch.Tensor) -> float:
        return float((x * valid).sum() / valid.sum())

    def direct_share(out: torch.Tensor) -> float:
        without = model.unembed(model.ln_final(resid - out)).double()
        if correct is None:
            num = (full - without).norm(dim=-1)
            den = (full - full.mean(-1, keepdim=True)).norm(dim=-1).clamp_min(1e-12)
            return float(np.clip(mean(num / den), -2, 2))
        m_full = full.gather(-1, correct[..., None])[..., 0] - full.mean(-1)
        m_wo = without.gather(-1, correct[..., None])[..., 0] - without.mean(-1)
        return float(np.clip(mean(1 - m_wo / m_full.clamp_min(1e-12)), -2, 2))

    rnorm = resid.double().norm(dim=-1).clamp_min(1e-12)
    comps, kinds, pats, ent, direct, write, depth = [], [], [], [], [], [], []
    for L in range(n_layers):
        pat = cache[f"blocks.{L}.attn.hook_pattern"].double()  # b h q k
        res = cache[f"blocks.{L}.attn.hook_result"]  # b q h d
        at = pat.permute(0, 2, 1, 3)[rows, ap]  # b slot h k
        p_log_p = torch.where(at > 0, at * at.clamp_min(1e-300).log(), torch.zeros_like(at)).sum(-1)  # b slot h
        logn = n_keys.double().log().clamp_min(1e-12)[..., None]
        h_norm = torch.where(n_keys[..., None] > 1, -p_log_p / logn, torch.zeros_like(p_log_p))
        for h in range(n_heads):
            comps.append(f"a{L}.{h}")
            kinds.append("head")
            pats.append(at[:, :, h].mean(0).cpu().numpy())
            ent.append(mean(h_norm[..., h]))
            out = res[rows, ap, h]
            direct.append(direct_share(out))
            write.append(float(np.clip(mean(out.double().norm(dim=-1) / rnorm), 0, 2)))
            depth.append(L / max(1, n_layers - 1))
        if not attn_only:
            out = cache[f"blocks.{L}.hook_mlp_out"][rows, ap]
            comps.append(f"m{L}")
            kinds.append("mlp")
            pats.append(np.zeros((n_slots, data.clean.shape[1])))
            ent.append(0.0)
            direct.append(direct_share(out))
            write.append(float(np.clip(mean(out.double().norm(dim=-1) / rnorm), 0, 2)))
            depth.append(L / max(1, n_layers - 1))
    return Profile(label, comps, kinds, _key_names(data), np.stack(pats), np.array(ent), np.array(direct),
                   np.array(write), np.array(depth))  # fmt: skip


@dataclass(frozen=True)
class Embedding:
    """Components of several models in one space: row i is ``components[i]`` of model
    ``labels[i]``, its vector ``vectors[i]`` (features named by ``features``)."""

    labels: list[str]
    components: list[str]
    kinds: list[str]
    vectors: Float[np.ndarray, "row feature"]
    features: list[str]
    profiles: list[Profile]

    def rows(self, label: str, kind: str | None = None, components: Sequence[str] | None = None) -> list[int]:
        """Row indices of model ``label`` (optionally one kind, or the named components)."""
        want = None if components is None else set(components)
        return [i for i, (lab, k, c) in enumerate(zip(self.labels, self.kinds, self.components))
                if lab == label and (kind is None or k == kind) and (want is None or c in want)]  # fmt: skip

    def distances(self, a: Sequence[int], b: Sequence[int]) -> Float[np.ndarray, "a b"]:
        va, vb = self.vectors[list(a)], self.vectors[list(b)]
        return np.sqrt(((va[:, None, :] - vb[None, :, :]) ** 2).sum(-1))


def embed(profiles: Sequence[Profile]) -> Embedding:
    """One space for the components of ``profiles`` (module doc). Every profile must have
    the same number of answer slots (measured on one task)."""
    if not profiles:
        raise ConfigError("no models to embed")
    slots = {p.patterns.shape[1] for p in profiles}
    if len(slots) > 1:
        raise TaskError(f"the models answer at different numbers of slots ({sorted(slots)}); head embeddings "
                        "compare models on one task's answer slots")  # fmt: skip
    if len({p.label for p in profiles}) < len(profiles):
        raise ConfigError(f"model labels must differ, got {[p.label for p in profiles]}")
    n_slots = slots.pop()
    keys: list[str] = []
    for p in profiles:
        keys += [k for k in p.key_names if k not in keys]
    labels, comps, kinds, vecs = [], [], [], []
    for p in profiles:
        block = np.zeros((len(p.components), n_slots, len(keys)))
        for k, name in enumerate(p.key_names):
            block[:, :, keys.index(name)] += p.patterns[:, :, k]
        scal = np.stack([p.entropy, p.direct, p.write, DEPTH_WEIGHT * p.depth], axis=1)
        vecs.append(np.concatenate([block.reshape(len(p.components), -1) / math.sqrt(n_slots), scal], axis=1))
        labels += [p.label] * len(p.components)
        comps += p.components
        kinds += p.kinds
    features = [f"attn[slot {j}, {k}]" for j in range(n_slots) for k in keys] + list(SCALARS)
    return Embedding(labels, comps, kinds, np.concatenate(vecs), features, list(profiles))


def head_embeddings(models: Sequence[tuple[str, Any]], task: Task, seed: int = 0,
                    n_prompts: int | None = None) -> Embedding:  # fmt: skip
    """Embed every head and MLP of each ``(label, model)`` on ``task``'s clean prompts
    (the same inputs for every model: one seed). Raises :class:`TaskError` when the
    models answer at different numbers of slots."""
    from circuitdag.tasks.base import load_data

    return embed([profile(m, load_data(task, m, seed=seed, n_prompts=n_prompts), label) for label, m in models])


@dataclass(frozen=True)
class Matching:
    """An optimal assignment between components of model ``a`` and model ``b``:
    ``pairs`` ``(a_component, b_component, distance)``, and the components left without a
    counterpart (more components of a kind on one side than on the other)."""

    pairs: list[tuple[str, str, float]]
    unmatched_a: list[str]
    unmatched_b: list[str]


def match(emb: Embedding, a: str, b: str, components_a: Sequence[str] | None = None,
          components_b: Sequence[str] | None = None) -> Matching:  # fmt: skip
    """Pair the components of models ``a`` and ``b`` (optionally only the named ones) so
    that the summed embedding distance is smallest (``linear_sum_assignment``), heads with
    heads and MLPs with MLPs."""
    from scipy.optimize import linear_sum_assignment

    pairs: list[tuple[str, str, float]] = []
    left_a: list[str] = []
    left_b: list[str] = []
    for kind in ("head", "mlp"):
        ra, rb = emb.rows(a, kind, components_a), emb.rows(b, kind, components_b)
        if ra and rb:
            d = emb.distances(ra, rb)
            ia, ib = linear_sum_assignment(d)
            pairs += [(emb.components[ra[i]], emb.components[rb[j]], float(d[i, j])) for i, j in zip(ia, ib)]
            left_a += [emb.components[ra[i]] for i in range(len(ra)) if i not in set(ia.tolist())]
            left_b += [emb.components[rb[j]] for j in range(len(rb)) if j not in set(ib.tolist())]
        else:
            left_a += [emb.components[i] for i in ra]
            left_b += [emb.components[j] for j in rb]
    return Matching(pairs, left_a, left_b)


def nearest(emb: Embedding, k: int = 3) -> dict[tuple[str, str], dict[str, list[tuple[str, float]]]]:
    """For every head, its ``k`` nearest heads in each other model:
    ``{(label, head): {other_label: [(head, distance), ...]}}``."""
    out: dict[tuple[str, str], dict[str, list[tuple[str, float]]]] = {}
    labels = list(dict.fromkeys(emb.labels))
    for la in labels:
        ra = emb.rows(la, "head")
        for lb in labels:
            rb = emb.rows(lb, "head")
            if lb == la or not rb or not ra:
                continue
            d = emb.distances(ra, rb)
            for i, r in enumerate(ra):
                order = np.argsort(d[i], kind="stable")[:k]
                out.setdefault((la, emb.components[r]), {})[lb] = [(emb.components[rb[j]], float(d[i, j])) for j in order]
    return out


def project(emb: Embedding) -> tuple[Float[np.ndarray, "row 2"], Float[np.ndarray, " 2"]]:
    """2-D PCA coordinates of every row (SVD of the centred vectors) and the fraction of
    the variance each of the two axes explains."""
    x = emb.vectors - emb.vectors.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    var = s**2
    frac = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return coords, np.pad(frac, (0, 2 - len(frac)))


def plot_map(emb: Embedding, path: str | Path, title: str = "") -> Path:
    """The 2-D PCA map as SVG: one colour per model, heads as dots, MLPs as squares, each
    labelled with its name."""
    from matplotlib.figure import Figure

    coords, frac = project(emb)
    fig = Figure(figsize=(7, 5.5))
    ax = fig.add_subplot()
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for n, label in enumerate(dict.fromkeys(emb.labels)):
        for kind, marker in (("head", "o"), ("mlp", "s")):
            rows = emb.rows(label, kind)
            if not rows:
                continue
            ax.scatter(coords[rows, 0], coords[rows, 1], color=colours[n % len(colours)], marker=marker, s=40,
                       alpha=0.8, label=f"{label} {'heads' if kind == 'head' else 'MLPs'}")  # fmt: skip
            for r in rows:
                ax.annotate(emb.components[r], coords[r], fontsize=7, xytext=(3, 3), textcoords="offset points",
                            color=colours[n % len(colours)])  # fmt: skip
    ax.set_xlabel(f"PC 1 ({100 * frac[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * frac[1]:.0f}% of variance)")
    ax.set_title(title or "components by behaviour (PCA of head embeddings)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_svg(fig, path)


def to_json(emb: Embedding, k: int = 3, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``heads.json`` document: method, features, and per component its vector, map
    coordinates, mean attention per slot (nonzero keys), and nearest heads in each other model."""
    coords, frac = project(emb)
    near = nearest(emb, k)
    rows = []
    prof = {p.label: p for p in emb.profiles}
    for i, (label, comp, kind) in enumerate(zip(emb.labels, emb.components, emb.kinds)):
        p = prof[label]
        c = p.components.index(comp)
        attn = None
        if kind == "head":
            attn = [{p.key_names[kk]: round(float(v), 4) for kk, v in enumerate(p.patterns[c, j]) if v >= 0.01}
                    for j in range(p.patterns.shape[1])]  # fmt: skip
        rows.append({
            "model": label, "component": comp, "kind": kind,
            "entropy": float(p.entropy[c]), "direct": float(p.direct[c]), "write": float(p.write[c]),
            "attention_by_slot": attn, "map": [float(coords[i, 0]), float(coords[i, 1])],
            "vector": [float(v) for v in emb.vectors[i]],
            "nearest": {o: [[h, round(d, 4)] for h, d in v] for o, v in near.get((label, comp), {}).items()},
        })  # fmt: skip
    return {"format": FORMAT, **(meta or {}), "method": METHOD,
            "features": emb.features, "map_variance_explained": [float(f) for f in frac],
            "models": list(dict.fromkeys(emb.labels)), "components": rows}  # fmt: skip


def write_heads(task: str, models: Sequence[str | None], out: str | Path, k: int = 3, seed: int = 0,
                n_prompts: int | None = None, device: str = "cpu", dtype: str = "float32") -> Embedding:  # fmt: skip
    """Embed the heads of ``models`` (names :func:`circuitdag.loading.load_task_model` takes;
    None: the task's model) on ``task``'s prompts; write ``heads.json`` (``k`` nearest heads
    in each other model) and the map ``heads.svg`` into ``out``. Returns the embedding."""

    from circuitdag.loading import load_task_model
    from circuitdag.tasks.base import load_data

    loaded = [load_task_model(task, name, device, getattr(torch, dtype)) for name in models]
    labels = [name or t.default_model or t.name for name, (t, _) in zip(models, loaded)]
    profiles = []
    for label, (the_task, model) in zip(labels, loaded):
        _options.check_n_prompts(model, n_prompts, device)
        profiles.append(profile(model, load_data(the_task, model, seed=seed, n_prompts=n_prompts), label))
    emb = embed(profiles)
    out = Path(out)
    doc = to_json(emb, k, {"task": task, "seed": seed, "n_prompts": n_prompts})
    write_json(out / "heads.json", doc, error=ConfigError)
    plot_map(emb, out / "heads.svg", f"{task}: heads of {', '.join(labels)} (PCA)")
    return emb
