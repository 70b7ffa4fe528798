"""Runs one benchmark function in a fresh process: `python -m bench.worker module:function JSON_KWARGS`.

Prints the function's (JSON-serialisable) result as one line `BENCH_RESULT {...}`.
"""
from __future__ import annotations

import importlib
import json
import sys


def main() -> int:
    target, raw = sys.argv[1], sys.argv[2]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(**json.loads(raw))
    print("BENCH_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
