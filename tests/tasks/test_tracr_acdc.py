"""ACDC recovers the derived ground truth of every shipped tracr program."""

import pytest
import torch

from circuitdag.discovery import run_acdc
from circuitdag.evaluate import confusion, roc_sweep, task_truth
from circuitdag.prepare import prepare
from circuitdag.tasks import get_task
from circuitdag.tasks.tracr import TASKS

NAMES = [cls.name for cls in TASKS]
ROC_THRESHOLDS = [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]


@pytest.fixture(scope="module")
def zero_patchers():
    out = {}
    for name in NAMES:
        task = get_task(name)
        out[name] = (task,) + prepare(task.load_model(dtype=torch.float64), task, ablation="zero")
    return out


@pytest.mark.parametrize("name", NAMES)
def test_zero_ablation_circuit_equals_ground_truth(name, zero_patchers):
    task, patcher, meta = zero_patchers[name]
    truth, inert = task_truth(task, "zero")
    circuit = run_acdc(patcher, task.default_threshold, meta=meta)
    assert circuit.edge_names - inert == truth - inert
    c = confusion(circuit, truth, inert)
    assert (c.fp, c.fn) == (0, 0)


@pytest.mark.parametrize("name", NAMES)
def test_zero_ablation_roc_auc_is_one(name, zero_patchers):
    task, patcher, meta = zero_patchers[name]
    truth, inert = task_truth(task, "zero")
    assert roc_sweep(patcher, truth, inert, ROC_THRESHOLDS, meta=meta)["auc"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_resample_ablation_circuit_equals_its_ground_truth(name):
    task = get_task(name)
    patcher, meta = prepare(task.load_model(dtype=torch.float64), task, ablation="resample")
    truth, inert = task_truth(task, "resample")
    circuit = run_acdc(patcher, task.default_threshold, meta=meta)
    c = confusion(circuit, truth, inert)
    assert (c.fp, c.fn) == (0, 0)


@pytest.mark.parametrize("name", ["tracr-reverse", "tracr-proportion"])
def test_fast_equals_reference_on_tracr(name, zero_patchers):
    task, patcher, meta = zero_patchers[name]
    for thr in (1e-4, task.default_threshold, 0.5):
        fast = run_acdc(patcher, thr, meta=meta)
        ref = run_acdc(patcher, thr, algorithm="acdc-reference", meta=meta)
        assert fast.same_as(ref)


def test_roc_refuses_a_ground_truth_without_edges(zero_patchers):
    """No edge to find (or none to leave out): the rates are undefined, and an AUC of 1.0
    would be reported whatever ACDC did."""
    from circuitdag.errors import ConfigError

    task, patcher, meta = zero_patchers["tracr-hist"]
    truth, _ = task_truth(task, "zero")
    with pytest.raises(ConfigError, match="no edges"):
        roc_sweep(patcher, set(), set(), [1e-3], meta=meta)
    with pytest.raises(ConfigError, match="no edges"):
        roc_sweep(patcher, truth, truth, [1e-3], meta=meta)  # every truth edge ignored
    with pytest.raises(ConfigError, match="every edge of the graph"):
        roc_sweep(patcher, set(patcher.graph.edge_names), set(), [1e-3], meta=meta)
