"""Hypothesis profiles: a bounded, derandomized one for CI, a long one and a fuzz one.

CI runs the default "ci" profile (the fuzz suite, tests/fuzz, runs a dozen examples per
property there). For the long run: ``HYPOTHESIS_PROFILE=long python -m pytest``; for the
fuzz suite at depth (at least 500 examples per property, random seeds):
``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/fuzz``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "fuzz",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
