"""Hypothesis profiles for the property tests (select with --hypothesis-profile NAME).

dev: quick local runs.  ci: derandomized, what `make test` runs.  thorough: many examples,
for `make test-thorough` or before a release.  deadline=None everywhere: JIT compilation and
first-call overheads of the twins make per-example timing meaningless.
"""

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
               print_blob=True)

settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("thorough", max_examples=300, **_COMMON)
settings.load_profile("dev")
