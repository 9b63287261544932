"""Shared test settings.

`scripts/dev.sh test` (and so CI) sets ONDEVICE_NO_SKIP=1: on a machine the setup script prepared, every dependency and
dataset is present, so a test that skips there (missing data, missing package) is turned into a failure instead of
passing silently.
"""
import os

import pytest

os.environ.setdefault("ONDEVICE_PROGRESS", "0")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("ONDEVICE_NO_SKIP") == "1" and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"skipped on a fully set-up machine (ONDEVICE_NO_SKIP=1): {reason}"
