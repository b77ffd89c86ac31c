"""keyseed.bench
~~~~~~~~~~~~~

Benchmarks behind ``keyseed bench``. Each one prints figures measured in a single run, next to
a reference measured in the same run, because the machines they run on are shared and noisy:
a ratio of two figures taken side by side means more than either figure alone.

:mod:`keyseed.bench.core` times complete exchanges between the two cores against the cost of
the public-key operations they cannot avoid (the *crypto floor*).
"""

from __future__ import annotations

from .core import (
    DEFAULT_EXCHANGES,
    DEFAULT_ROUNDS,
    BenchFailure,
    CoreReport,
    SuiteResult,
    run_core,
)

__all__ = [
    "DEFAULT_EXCHANGES",
    "DEFAULT_ROUNDS",
    "BenchFailure",
    "CoreReport",
    "SuiteResult",
    "run_core",
]
