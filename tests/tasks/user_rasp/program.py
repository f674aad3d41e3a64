"""A RASP program a user might write, compiled by tests/tasks/test_tracr_compile.py with
``circuitdag tracr compile`` (it is not shipped with circuitdag)."""

from tracr.rasp import rasp


def smaller_count():
    """For each token, how many tokens of the sequence are smaller, capped at 2:
    a selector-width head (``Select(tokens, tokens, LT)``) and its MLPs."""
    smaller = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.LT))
    return rasp.Map(lambda n: min(n, 2), smaller).named("smaller_count")


def no_default():
    """The previous token: nothing precedes the first one, so its output is None."""
    prev = rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + 1)
    return rasp.Aggregate(prev, rasp.tokens).named("prev")


def not_a_program():
    return 42
