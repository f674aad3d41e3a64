"""bootstrap.frozen_heap: the reruns' garbage collections skip what was alive before them."""

import gc

from circuitdag.bootstrap import frozen_heap


def test_frozen_heap_freezes_for_the_block_and_respects_an_outer_freeze() -> None:
    gc.unfreeze()
    try:
        kept = [object() for _ in range(100)]
        with frozen_heap():
            assert gc.get_freeze_count() >= len(kept)
        assert gc.get_freeze_count() == 0
        gc.freeze()  # someone else's freeze (the test suite's conftest does one)
        outer = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() == outer  # not undone by the block
    finally:
        gc.freeze()  # leave the heap as the suite's conftest expects: frozen
