"""``medad serve`` in a real browser, with no --checkpoint: headless Chromium uploads images, picks either method,
and the page's scores equal the CLI's.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``) and
selenium (the ``test`` extra); skipped with that message otherwise.  Uses real brain-tumour MRI images
from the shared data when they are there, phantom images otherwise.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from medad.cli.main import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("no Chromium: the browser test needs Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip install -e '.[test]')")
pytest.importorskip("flask", reason="medad serve needs Flask (pip install -e '.[test,deploy]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

BRAIN_TUMOR = Path(__file__).resolve().parents[2].parent / "shared/data/brain_tumor_mri_nickparvar"
#: Chromium's switches for a sandbox-less container that must not reach the network
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1600")


def _images(phantom_chest) -> tuple[list[Path], list[Path]]:
    """Three normal references and four queries (normal and abnormal)."""
    if BRAIN_TUMOR.is_dir():
        normals = sorted((BRAIN_TUMOR / "train/good").iterdir())[:3]
        queries = [*sorted((BRAIN_TUMOR / "test/good").iterdir())[:2], *sorted((BRAIN_TUMOR / "test/glioma").iterdir())[:2]]
        return normals, queries
    return [s.path for s in phantom_chest.train[:3]], [s.path for s in phantom_chest.test[4:8]]


@pytest.fixture
def server():
    """``python -m medad serve`` (no --checkpoint: the bundled scorers, the adapted student the default) on a free
    port; yields (url, temporary folder), then stops it with Ctrl-C."""
    # the server computes on as many threads as this process, so that its float32 sums match the CLI's here
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "medad", "serve", "--port", "0", "--device", "cpu"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stdout:
            found = re.search(r"(http://127\.0\.0\.1:\d+/) \(temporary files in (\S+);", line)
            if found:
                break
        else:
            pytest.fail(f"medad serve did not start: {process.stderr.read()[-2000:]}")
        state = {"url": found.group(1), "workdir": Path(found.group(2))}
        yield state
        process.send_signal(signal.SIGINT)
        state["returncode"] = process.wait(timeout=60)
        assert state["returncode"] == 0, process.stderr.read()[-2000:]
        assert not state["workdir"].exists()  # the temporary folder went with the app
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="medad-chromium-")
    for argument in (*CHROMIUM_ARGS, f"--user-data-dir={profile}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _submit(driver, url: str, references: list[Path], queries: list[Path], method: str | None = None) -> None:
    driver.get(url)
    if method:
        driver.find_element(By.ID, f"method-{method}").click()
    driver.find_element(By.ID, "references").send_keys("\n".join(str(p) for p in references))
    driver.find_element(By.ID, "queries").send_keys("\n".join(str(p) for p in queries))
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.ID, "scores") or d.find_elements(By.ID, "error"))


def _cli_scores(args: list[str], references: list[Path], queries: list[Path], out: Path) -> dict[str, float]:
    assert main(["fewshot", "score", *args, "--support", *map(str, references), "--query", *map(str, queries),
                 "--out", str(out), "--support-cache", str(out.parent / "cache"), "--quiet"]) == 0
    with open(out / "scores.csv") as handle:
        return {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_browser_upload_shows_the_cli_scores_and_a_clear_error(server, browser, phantom_chest, tmp_path):
    references, queries = _images(phantom_chest)
    _submit(browser, server["url"], references, queries)
    assert not browser.find_elements(By.ID, "error"), browser.find_element(By.ID, "error").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")
    page = {row.find_element(By.CLASS_NAME, "name").text:
            float(row.find_element(By.CLASS_NAME, "score").get_attribute("data-score")) for row in rows}
    shown = {row.find_element(By.CLASS_NAME, "name").text: row.find_element(By.CLASS_NAME, "score").text
             for row in rows}

    cli = _cli_scores([], references, queries, tmp_path / "cli")  # the default scorer, as the page's default
    assert "Scored with medad bundled generic student" in browser.find_element(By.ID, "model").text
    assert set(page) == {path.name for path in queries}
    for name, score in cli.items():
        assert page[name] == pytest.approx(score, abs=1e-6)
        assert shown[name] == f"{score:.5f}"
    assert "leave-one-out" in browser.find_element(By.ID, "threshold-rule").text
    # every heat map loaded, and nothing came from another origin
    assert browser.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(name.startswith(server["url"]) for name in resources)
    assert any(server["workdir"].rglob("*.png"))  # uploads and figures live in the temporary folder

    _submit(browser, server["url"], references, queries, method="patchcore")
    assert "PatchCore-K" in browser.find_element(By.ID, "model").text
    page = {row.find_element(By.CLASS_NAME, "name").text:
            float(row.find_element(By.CLASS_NAME, "score").get_attribute("data-score"))
            for row in browser.find_elements(By.CSS_SELECTOR, "#scores tbody tr")}
    assert page == pytest.approx(_cli_scores(["--method", "patchcore"], references, queries, tmp_path / "pc"), abs=1e-6)

    not_an_image = tmp_path / "report.png"
    not_an_image.write_text("this is text")
    _submit(browser, server["url"], references, [not_an_image])
    assert "report.png: not a PNG, JPEG or DICOM file" in browser.find_element(By.ID, "error").text
