"""Hypothesis tests of a circuit (Shi et al. 2024, "Hypothesis testing the circuit hypothesis
in LLMs", NeurIPS; arXiv:2410.13032), on exact patching.

Each test compares circuits prompt by prompt (:mod:`circuitdag.per_prompt`: one exact
patched pass per circuit gives every prompt's value) and returns a :class:`TestResult`
with a p-value:

* **equivalence** -- does the circuit do the task as well as the full model? On each
  prompt the one with the lower score (the task's logit difference, negated, when it has
  answer tokens, else the run's metric) "wins"; ties count half. H0 (equivalent):
  ``|P(circuit wins) - 1/2| <= epsilon``; the p-value is the binomial tail at the nearer
  edge of that band. A small p-value says the circuit is *not* equivalent.
* **independence** -- is what is left once the circuit is removed (the complement: every
  edge but the circuit's) unrelated to the model's behaviour? H0: the complement's
  per-prompt score is independent of the full model's; HSIC with Gaussian kernels (median
  distance bandwidths, Gretton et al. 2007), p-value by permutation. A small p-value says
  the complement still tracks the model: the circuit is not the only mechanism.
* **minimality** -- does each edge matter? For edge ``e`` of circuit ``C`` the effect on
  prompt ``i`` is ``|m_i(C - e) - m_i(C)|``; the reference is the effect of removing a
  random edge from an *inflated* circuit (``C`` plus a random ``embed -> logits`` path,
  the edge drawn from the path's new edges), one reference per prompt. H0 (the edge is no
  more needed than a random one): ``P(effect_e > effect_ref) <= q``; binomial tail p-value,
  Bonferroni over the circuit's edges. The circuit passes when every edge rejects H0;
  the edges that do not are listed.
* **sufficiency** -- is the circuit better than random circuits of its size? ``R`` random
  circuits, each the union of random ``embed -> logits`` paths cut to ``|C|`` edges;
  p-value ``(1 + #{|1 - f(random)| <= |1 - f(C)|}) / (R + 1)``: how often a random circuit
  is at least as close to the full model (distance of faithfulness from 1, as MIB's CMD;
  "at least as faithful" would count a random circuit that overshoots, ``f = 4``, as
  better).

The permutation and random-circuit p-values cannot go below ``1 / (permutations + 1)`` and
``1 / (circuits + 1)`` (``detail['p_floor']``): a p-value at its floor says only that no
permutation or random circuit did as well, and is reported as such.

Costs, in exact passes over every prompt: equivalence 2, independence 2, minimality
``1 + 2 * references`` plus one evaluation per edge, run from the edge's destination layer
on (:func:`~circuitdag.per_prompt.removal_metrics`), sufficiency ``R + 2``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from circuitdag.errors import ConfigError
from circuitdag.graph import Graph
from circuitdag.metrics import logit_diff
from circuitdag.patching import Patcher
from circuitdag.per_prompt import (
    faithfulness,
    prompt_metrics,
    prompt_scores,
    prompt_weights,
    removal_metrics,
    resample_mean,
)

#: The tests' significance level (``run_tests``' default; ``--tests`` uses it).
ALPHA = 0.05


@dataclass
class TestResult:
    """One test: its name, statistic, p-value, whether H0 is rejected at ``alpha``, and what
    a reader needs to interpret it (``detail``)."""

    name: str
    statistic: float
    p_value: float
    alpha: float
    null: str
    #: Whether rejecting H0 is what a good circuit does (minimality, sufficiency) or what
    #: a bad one does (equivalence, independence).
    good_when_rejected: bool
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected(self) -> bool:
        return bool(self.p_value < self.alpha)

    @property
    def passed(self) -> bool:
        """Whether the circuit passes: H0 rejected where that is good, kept where not."""
        return self.rejected == self.good_when_rejected

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rejected": self.rejected, "passed": self.passed}


# ---------------------------------------------------------------------- random circuits
def random_path(graph: Graph, rng: np.random.Generator) -> np.ndarray:
    """Edge indices of one random ``embed -> logits`` path: from ``logits``, a uniformly
    drawn incoming edge at each node back to an ``embed`` node."""
    incoming, sources = graph.incoming, set(graph.sources.tolist())
    node, path = graph.sink, []
    while node not in sources:
        e = int(rng.choice(incoming[node]))
        path.append(e)
        node = int(graph.edges.src[e])
    return np.asarray(path, dtype=np.int64)


def random_circuit(graph: Graph, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random circuit of exactly ``size`` edges (bool per edge): the union of random
    paths, the last one's new edges cut at random to fit."""
    if not 0 < size <= graph.n_edges:
        raise ConfigError(f"a random circuit needs 1 to {graph.n_edges} edges, got {size}")
    alive = np.zeros(graph.n_edges, dtype=bool)
    while alive.sum() < size:
        new = np.setdiff1d(random_path(graph, rng), np.flatnonzero(alive))
        room = size - int(alive.sum())
        alive[rng.permutation(new)[:room]] = True
    return alive


def _scorer(patcher: Patcher) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """Per-prompt scores the equivalence and independence tests compare (module docstring)."""
    if patcher.ref.correct is not None and patcher.ref.wrong is not None:
        return (lambda alive: prompt_scores(patcher, alive, logit_diff)), "logit_diff"
    return (lambda alive: prompt_metrics(patcher, alive)), "the run's metric"


# ---------------------------------------------------------------------- the tests
def equivalence(patcher: Patcher, alive: np.ndarray, epsilon: float = 0.1, alpha: float = ALPHA) -> TestResult:
    """Equivalence of circuit ``alive`` and the full model (module docstring)."""
    if not 0 <= epsilon < 0.5:
        raise ConfigError(f"the equivalence margin must be in [0, 0.5), got {epsilon}")
    score, on = _scorer(patcher)
    s_c, s_m = score(alive), score(np.ones(patcher.graph.n_edges, dtype=bool))
    wins, ties, n = int((s_c < s_m).sum()), int((s_c == s_m).sum()), len(s_c)
    k = wins + ties // 2
    if k >= n / 2:
        p = float(stats.binom.sf(k - 1, n, 0.5 + epsilon))
    else:
        p = float(stats.binom.cdf(k, n, 0.5 - epsilon))
    return TestResult("equivalence", k / n, min(1.0, p), alpha,
                      f"the circuit beats the model on a fraction of prompts within 1/2 +- {epsilon:g}", False,
                      {"score": on, "circuit_wins": wins, "ties": ties, "prompts": n,
                       "mean_score_circuit": float(s_c.mean()), "mean_score_model": float(s_m.mean())})  # fmt: skip


def hsic(x: np.ndarray, y: np.ndarray) -> float:
    """The biased HSIC statistic of two samples ``(n,)`` with Gaussian kernels whose
    bandwidths are each sample's median pairwise distance (0 when a sample is constant)."""
    n = len(x)

    def centred_gram(v: np.ndarray) -> np.ndarray:
        d = np.abs(v[:, None] - v[None, :])
        med = np.median(d[np.triu_indices(n, 1)]) if n > 1 else 0.0
        if med == 0:
            med = d.max()
        if med == 0:
            return np.zeros((n, n))
        K = np.exp(-(d**2) / (2 * med**2))
        return K - K.mean(0) - K.mean(1)[:, None] + K.mean()

    return float((centred_gram(x) * centred_gram(y)).sum() / (n - 1) ** 2)



def can_decide(test: str, option: str, count: int, alpha: float) -> None:
    """Raises :class:`ConfigError` when ``count`` permutations or random circuits cannot give
    a p-value below ``alpha`` (its floor ``1 / (count + 1)`` is at or above it): the test
    could only keep H0, which would read as independence passed or sufficiency failed."""
    if 1 / (count + 1) >= alpha:
        need = int(1 / alpha)
        need += 1 / (need + 1) >= alpha
        raise ConfigError(f"{test} cannot decide at alpha {alpha:g} with {option}={count} (its smallest p-value is "
                          f"1/{count + 1}); use --test-option {option}=N with N >= {need}")  # fmt: skip


def independence(patcher: Patcher, alive: np.ndarray, permutations: int = 1000, alpha: float = ALPHA,
                 seed: int = 0) -> TestResult:  # fmt: skip
    """Independence of the complement of ``alive`` from the full model (module docstring).
    Raises :class:`ConfigError` when the full model's scores are constant over the prompts
    (KL without answer tokens: 0 everywhere), where no dependence can be measured."""
    can_decide("independence", "permutations", permutations, alpha)
    score, on = _scorer(patcher)
    s_m, s_rest = score(np.ones(patcher.graph.n_edges, dtype=bool)), score(~np.asarray(alive, dtype=bool))
    if np.ptp(s_m) == 0:
        raise ConfigError(f"the independence test needs scores that vary over prompts, but the full model's "
                          f"{on} is the same on every prompt; use a task with answer tokens")  # fmt: skip
    rng = np.random.default_rng(seed)
    obs = hsic(s_m, s_rest)
    null = np.array([hsic(s_m, s_rest[rng.permutation(len(s_rest))]) for _ in range(permutations)])
    p = (1 + int((null >= obs).sum())) / (permutations + 1)
    return TestResult("independence", obs, p, alpha, "the complement's scores are independent of the model's", False,
                      {"score": on, "permutations": permutations, "p_floor": 1 / (permutations + 1),
                       "spearman": float(stats.spearmanr(s_m, s_rest).statistic) if np.ptp(s_rest) else 0.0})  # fmt: skip


def minimality(patcher: Patcher, alive: np.ndarray, q: float = 0.5, alpha: float = ALPHA, references: int = 20,
               seed: int = 0, progress: bool = False) -> TestResult:  # fmt: skip
    """Minimality of every edge of ``alive`` (module docstring). The statistic is the
    number of edges that do not reject H0 (0 for a minimal circuit); ``detail['edges']``
    gives each edge's count of prompts where it beat its reference, and its p-value."""
    alive = np.asarray(alive, dtype=bool)
    graph, members = patcher.graph, np.flatnonzero(alive)
    if not len(members):
        raise ConfigError("the minimality test needs a circuit with at least one edge")
    if not 0 < q < 1:
        raise ConfigError(f"the minimality quantile q must be between 0 and 1, got {q}")
    rng = np.random.default_rng(seed)
    bar = tqdm(total=len(members) + 1 + 2 * references, desc="minimality", unit="pass", disable=not progress)
    base = prompt_metrics(patcher, alive)
    bar.update()
    ref = np.empty((references, patcher.B))
    for j in range(references):
        for _ in range(100):  # a path that adds at least one edge
            new = np.setdiff1d(random_path(graph, rng), members)
            if len(new):
                break
        else:
            new = np.flatnonzero(~alive)
        inflated = alive.copy()
        inflated[new] = True
        less = inflated.copy()
        less[rng.choice(new)] = False
        ref[j] = np.abs(prompt_metrics(patcher, less) - prompt_metrics(patcher, inflated))
        bar.update(2)
    reference = ref[np.arange(patcher.B) % references, np.arange(patcher.B)]  # prompt i gets reference i mod R
    level = alpha / len(members)  # Bonferroni
    rows: list[dict[str, Any]] = []
    failing: list[str] = []
    effects = np.abs(removal_metrics(patcher, alive, members, done=bar.update) - base)  # edges x prompts
    for e, effect in zip(members, effects, strict=True):
        k = int((effect > reference).sum())
        p = float(stats.binom.sf(k - 1, patcher.B, q))
        rows.append({"edge": graph.edge_names[e], "wins": k, "p_value": p, "mean_effect": float(effect.mean())})
        if p >= level:
            failing.append(graph.edge_names[e])
    bar.close()
    p_max = max(float(r["p_value"]) for r in rows)
    return TestResult("minimality", float(len(failing)), min(1.0, p_max * len(members)), alpha,
                      f"some edge is no more needed than a random edge (P(effect > reference) <= {q:g})", True,
                      {"q": q, "references": references, "prompts": patcher.B, "bonferroni_level": level,
                       "not_needed": failing, "mean_reference_effect": float(reference.mean()),
                       "edges": rows})  # fmt: skip


def sufficiency(patcher: Patcher, alive: np.ndarray, circuits: int = 100, alpha: float = ALPHA, seed: int = 0,
                progress: bool = False) -> TestResult:  # fmt: skip
    """Faithfulness of ``alive`` against ``circuits`` random circuits of its size (module
    docstring). The statistic is the circuit's faithfulness; ``detail`` has the random
    circuits' mean and the fraction of them at least as close to 1."""
    can_decide("sufficiency", "circuits", circuits, alpha)
    alive = np.asarray(alive, dtype=bool)
    n, size = patcher.graph.n_edges, int(alive.sum())
    rng = np.random.default_rng(seed)
    w = prompt_weights(patcher)
    m_full = patcher.circuit_metric(np.ones(n, dtype=bool))
    m_empty = patcher.circuit_metric(np.zeros(n, dtype=bool))
    f_c = float(faithfulness(np.asarray(patcher.circuit_metric(alive)), np.asarray(m_full), np.asarray(m_empty)))
    f_r = []
    for _ in tqdm(range(circuits), desc="sufficiency", unit="circuit", disable=not progress):
        m = float(resample_mean(prompt_metrics(patcher, random_circuit(patcher.graph, size, rng)), w))
        f_r.append(float(faithfulness(np.asarray(m), np.asarray(m_full), np.asarray(m_empty))))
    f_arr = np.asarray(f_r)
    p = (1 + int((np.abs(1 - f_arr) <= abs(1 - f_c)).sum())) / (circuits + 1)
    return TestResult("sufficiency", f_c, p, alpha, "the circuit is no more faithful than a random circuit of its size", True,
                      {"random_circuits": circuits, "p_floor": 1 / (circuits + 1), "edges": size,
                       "random_faithfulness_mean": float(f_arr.mean()),
                       "random_faithfulness_max": float(f_arr.max()),
                       "random_as_close": float((np.abs(1 - f_arr) <= abs(1 - f_c)).mean())})  # fmt: skip


TESTS = ("equivalence", "independence", "minimality", "sufficiency")


def run_tests(patcher: Patcher, alive: np.ndarray, tests: tuple[str, ...] = TESTS, alpha: float = ALPHA,
              seed: int = 0, progress: bool = False, **options: Any) -> dict[str, dict[str, Any]]:  # fmt: skip
    """The ``tests`` (names from :data:`TESTS`) of circuit ``alive``, as JSON-ready dicts by
    name. ``options``: ``epsilon`` (equivalence), ``permutations`` (independence), ``q``
    and ``references`` (minimality), ``circuits`` (sufficiency). A test that cannot run on
    this task (independence when the model's scores are constant) is reported with its
    reason instead of a p-value."""
    unknown = set(tests) - set(TESTS)
    if unknown:
        raise ConfigError(f"unknown test {min(unknown)!r}; choose from {', '.join(TESTS)}")
    takes = {"equivalence": ("epsilon",), "independence": ("permutations",), "minimality": ("q", "references"),
             "sufficiency": ("circuits",)}  # fmt: skip
    fns: dict[str, Callable[..., TestResult]] = {"equivalence": equivalence, "independence": independence,
                                                  "minimality": minimality, "sufficiency": sufficiency}  # fmt: skip
    out: dict[str, dict[str, Any]] = {}
    for name in tests:
        kw: dict[str, Any] = {k: options[k] for k in takes[name] if options.get(k) is not None}
        if name != "equivalence":
            kw["seed"] = seed
        if name in ("minimality", "sufficiency"):
            kw["progress"] = progress
        try:
            out[name] = fns[name](patcher, alive, alpha=alpha, **kw).to_dict()
        except ConfigError as exc:
            out[name] = {"name": name, "skipped": str(exc)}
    return out


__all__ = ["ALPHA", "TESTS", "TestResult", "can_decide", "equivalence", "hsic", "independence", "minimality", "random_circuit",
           "random_path", "run_tests", "sufficiency"]  # fmt: skip
