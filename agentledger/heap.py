"""The garbage collector of the long-running processes (the worker, the sink), once they are ready."""

from __future__ import annotations

import gc

# The collector's thresholds once a process runs (Python's are 700, 10, 10). An event allocates
# dozens of containers, so at 700 a young collection ran every 120 events or so and promoted each
# batch's live objects, and a full one (over the budget states kept since the freeze) came every
# 13,000 events: 0.8-0.9 s of 200,000 events' worth of the worker's work in bench.pipeline,
# against 0.2-0.3 s with these (about 3 us of CPU per event).
GC_THRESHOLDS = (20_000, 20, 20)


def settle() -> int:
    """Move everything alive now out of the collector's reach (`gc.freeze`: modules, clients,
    price data live as long as the process, and a full collection walked them all each time),
    then collect less often (GC_THRESHOLDS). Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return gc.get_freeze_count()
