"""phonekey benchmarks: each module measures one section and returns JSON-ready dicts.

``python -m bench.report`` (or ``phonekey bench``) runs them all; each section
module also runs alone (``python -m bench.unlock``). Figures that are compared
with each other are measured interleaved in one run, and reported as median
(p50), p99 and the number of runs. No test asserts on any of these timings.
"""
