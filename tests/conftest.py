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


GOLDEN_DIR = os.path.join(os.path.dirname(__file__), "golden")


def pytest_addoption(parser):
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/golden/* from the current output instead of comparing against them")


@pytest.fixture
def golden(request):
    """`golden("name.md", text)`: compare text with the committed tests/golden/name.md. A missing golden fails;
    goldens change only with `pytest --update-goldens`."""
    update = request.config.getoption("--update-goldens")

    def check(name: str, text: str) -> None:
        path = os.path.join(GOLDEN_DIR, name)
        if update:
            os.makedirs(GOLDEN_DIR, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            return
        if not os.path.exists(path):
            pytest.fail(f"golden file {path} is missing; create it with `pytest --update-goldens` and commit it")
        with open(path, encoding="utf-8") as f:
            expected = f.read()
        if text != expected:
            import difflib

            diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "actual"))
            pytest.fail(f"output differs from golden {path} (run with --update-goldens if intended):\n{diff}")

    return check
