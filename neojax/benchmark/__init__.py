"""The benchmark: `python -m neojax.benchmark --help` (neojax.benchmark.command) says what it measures.
One module a section (train, decode, evaluation, serving, mesh, data), each with its `rows(run)`;
`command.main` checks the flags and dispatches. Figures land in docs/performance.md.
"""
from neojax.benchmark.command import SECTIONS, main

__all__ = ["SECTIONS", "main"]
