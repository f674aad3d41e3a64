import numpy as np
import pytest

from circuitdag._kernels import Reachability, backend


def random_dag(rng, n_nodes, n_edges, n_implicit=3):
    src = rng.integers(0, n_nodes - 1, n_edges)
    dst = np.array([rng.integers(s + 1, n_nodes) for s in src])
    isrc = rng.integers(0, n_nodes - 1, n_implicit)
    idst = np.array([rng.integers(s + 1, n_nodes) for s in isrc])
    return src.astype(np.int32), dst.astype(np.int32), (isrc.astype(np.int32), idst.astype(np.int32))


@pytest.mark.parametrize("seed", range(20))
def test_numba_and_numpy_agree_on_random_dags(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    src, dst, imp = random_dag(rng, n, int(rng.integers(1, 120)))
    alive = rng.random(src.shape[0]) < 0.5
    r = Reachability(n, src, dst, imp)
    out = {}
    for kind in ("numba", "numpy"):
        monkeypatch.setenv("CIRCUITDAG_KERNELS", kind)
        assert backend() == kind
        out[kind] = (r.reaches_sink(alive, n - 1), r.reached_from_source(alive, 0), r.on_path(alive, 0, n - 1))
    for a, b in zip(out["numba"], out["numpy"]):
        np.testing.assert_array_equal(a, b)


def test_reachability_matches_networkx():
    import networkx as nx

    rng = np.random.default_rng(7)
    n = 30
    src, dst, imp = random_dag(rng, n, 80)
    alive = rng.random(80) < 0.4
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(src[alive].tolist(), dst[alive].tolist()))
    g.add_edges_from(zip(imp[0].tolist(), imp[1].tolist()))
    r = Reachability(n, src, dst, imp)
    expect_sink = np.array([i == n - 1 or nx.has_path(g, i, n - 1) for i in range(n)])
    expect_src = np.array([i == 0 or nx.has_path(g, 0, i) for i in range(n)])
    np.testing.assert_array_equal(r.reaches_sink(alive, n - 1), expect_sink)
    np.testing.assert_array_equal(r.reached_from_source(alive, 0), expect_src)
    on = r.on_path(alive, 0, n - 1)
    np.testing.assert_array_equal(on, alive & expect_src[src] & expect_sink[dst])


def test_rejects_non_topological_numbering():
    with pytest.raises(ValueError):
        Reachability(3, np.array([2], np.int32), np.array([1], np.int32), (np.zeros(0, np.int32),) * 2)


def test_small_tables_use_numpy_by_default(monkeypatch):
    """Numba's start-up (about a second) is paid only for edge tables where it pays back."""
    from circuitdag._kernels import NUMBA_MIN_EDGES

    monkeypatch.delenv("CIRCUITDAG_KERNELS", raising=False)
    assert backend(NUMBA_MIN_EDGES - 1) == "numpy" and backend(NUMBA_MIN_EDGES) == "numba" and backend() == "numba"
    monkeypatch.setenv("CIRCUITDAG_KERNELS", "numba")
    assert backend(10) == "numba"
    monkeypatch.setenv("CIRCUITDAG_KERNELS", "numpy")
    assert backend(10**6) == "numpy"
