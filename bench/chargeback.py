"""Runs bench/chargeback_bench.py (unchanged) for the runner, in a process of its own (one chDB
engine per process), writing its JSON where the runner asks instead of over
bench/results/chargeback.json.

    python -m bench.chargeback OUT.json [chargeback_bench arguments: --events N --runs R ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench import chargeback_bench


def main() -> None:
    out = Path(sys.argv[1])
    chargeback_bench.RESULTS = out
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    chargeback_bench.main()


if __name__ == "__main__":
    main()
