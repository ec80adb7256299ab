"""`make bench`: run every benchmark, print its figures, keep them in bench-results/.

`python -m bench [name ...]` runs only the named ones (e.g. `sync`, `emulator`).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = [
    "emulator",
    "sync",
    "reconcile",
    "push",
    "daemon",
    "export",
    "import",
    "migrate",
    "replicas",
    "freshness",
]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}", file=sys.stderr)
        return 2
    results: dict[str, object] = {}
    failed = False
    for name in names:
        print(f"\n=== bench {name} ===", flush=True)
        started = time.monotonic()
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            results[name] = module.main()
        except Exception:
            traceback.print_exc()
            results[name] = {"error": 1.0}
            failed = True
        print(f"=== {name}: {time.monotonic() - started:.1f}s ===", flush=True)
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out / f"bench-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nfigures written to {out / f'bench-{stamp}.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
