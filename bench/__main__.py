"""Run the benchmarks: ``python -m bench`` (all) or ``python -m bench scheduler …``.

Each benchmark writes ``bench/results/<name>.json`` (its numbers, the machine, the date
and whether every target was met); the runner exits 1 if any target was missed.
See ``bench/__init__.py`` for what a benchmark module provides.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from bench import machine

RESULTS = Path(__file__).resolve().parent / "results"


def discover() -> dict[str, ModuleType]:
    """Every ``bench/*_bench.py`` module, by its ``NAME`` (default: the file's stem)."""
    found: dict[str, ModuleType] = {}
    package = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda m: m.name):
        if info.name.endswith("_bench"):
            module = importlib.import_module(f"bench.{info.name}")
            name = getattr(module, "NAME", info.name.removesuffix("_bench"))
            found[name] = module
    return found


def main(argv: list[str] | None = None) -> int:
    benchmarks = discover()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run ({', '.join(benchmarks)})"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)} (known: {', '.join(benchmarks)})")
    RESULTS.mkdir(exist_ok=True)
    all_passed = True
    for name in args.names or list(benchmarks):
        print(f"== {name}", flush=True)
        module = benchmarks[name]
        if not hasattr(module, "run"):
            # A self-contained benchmark: it writes its own results file.
            passed = module.main([]) == 0
            print(f"{'PASS' if passed else 'FAIL'}  {name}")
            all_passed = all_passed and passed
            continue
        record = {
            "benchmark": name,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine(),
            **module.run(),
        }
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(record, indent=2) + "\n")
        print(f"{'PASS' if record['passed'] else 'FAIL'}  {name}  → bench/results/{path.name}")
        all_passed = all_passed and bool(record["passed"])
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
