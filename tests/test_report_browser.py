"""Open a real bench report in headless Chromium: the plots render and the console stays clean.

Needs the Debian packages chromium and chromium-driver (and selenium); marked `browser`.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from test_bench_common import FAST, cnn_with_onnx_artifacts

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from ondevice.bench import BenchConfig, TorchModelRef, bench

    s = cnn_with_onnx_artifacts(tmp_path_factory.mktemp("browser"), ("fp32",), verify=slice(1400, 1500))
    x, y, models = s["x"], s["y"], s["models"]
    rep = bench([s["arts"]], data=(x[1400:], y[1400:]), teacher=TorchModelRef("teacher", f"{models}:mlp"),
                student=TorchModelRef("student", f"{models}:cnn", weights=str(s["weights"])),
                config=BenchConfig(threads=(1,), **FAST), out_dir=s["tmp"] / "report")
    return Path(rep["files"]["html"])


@pytest.fixture(scope="module")
def driver():
    if not (CHROMIUM and DRIVER):
        pytest.fail("chromium and chromium-driver are needed: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    profile = tempfile.mkdtemp(prefix="ondevice-chromium-")
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_plots_without_console_errors(report_html, driver):
    driver.get(report_html.as_uri())
    assert driver.title == "ondevice bench report"
    figs = driver.execute_script("""
        return Array.from(document.querySelectorAll('figure.plot')).map(f => {
            const img = f.querySelector('img'); const r = img.getBoundingClientRect();
            return {id: f.id, complete: img.complete, natural: img.naturalWidth, w: r.width, h: r.height};
        });""")
    ids = [f["id"] for f in figs]
    assert ids == ["plot_accuracy_latency", "plot_sizes", "plot_retention", "plot_energy"]
    for f in figs:
        assert f["complete"] and f["natural"] > 100, f  # the PNG decoded
        assert f["w"] > 100 and f["h"] > 100, f  # and is laid out with a real size
    # tables rendered with every item
    rows = driver.execute_script("return Array.from(document.querySelectorAll('table')[0].rows).map(r => r.cells[0].innerText)")
    assert rows == ["item", "teacher", "student", "onnxruntime/fp32"]
    # self-contained: nothing fetched besides the page itself
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
