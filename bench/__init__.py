"""Corral's benchmarks: ``python -m bench [NAME ...]`` (or ``make bench``).

Every module ``bench/<name>_bench.py`` is one benchmark, selected by ``<name>`` (or by
its ``NAME`` if it defines one). A benchmark either

* defines ``run() -> dict``, which measures and returns a JSON-compatible record with at
  least ``"passed": bool`` (all targets met); the runner adds the machine and the date
  and writes ``bench/results/<name>.json``; or
* defines ``main(argv) -> int``, a complete command of its own that writes its own
  results and returns 0 when its targets are met (it can also be run as
  ``python -m bench.<name>_bench`` with its own options).
"""
