"""Regenerate ``docs/serve_screenshot.png``: ``medad serve`` in headless Chromium with real head-CT images.

    python docs/serve_screenshot.py [--checkpoint RUN] [--data-root ../shared/data]

Without ``--checkpoint`` the app serves medad's bundled model (the committed screenshot), with it a few-shot
run folder.  Four normal training images of the head-CT task (``headct``, which the bundled model never saw)
are the references; two normal and two haemorrhage test images the queries.  Needs chromium, chromium-driver
and selenium.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from medad.data.tasks import load_task

ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a few-shot run folder (default: the bundled model)")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", default="docs/serve_screenshot.png")
    args = parser.parse_args()
    task = load_task("headct", root=args.data_root)
    references = [sample.path for sample in task.train[:4]]
    queries = ([s.path for s in task.test if s.label == 0][:2] + [s.path for s in task.test if s.label == 1][:2])
    checkpoint = ["--checkpoint", args.checkpoint] if args.checkpoint else []
    server = subprocess.Popen([sys.executable, "-m", "medad", "serve", *checkpoint, "--port", "0", "--device", "cpu"],
                              stdout=subprocess.PIPE, text=True)
    profile = tempfile.mkdtemp(prefix="medad-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in (*ARGS, f"--user-data-dir={profile}", "--window-size=1240,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")),
                              options=options)
    try:
        url = next(found.group(0) for line in server.stdout if (found := re.search(r"http://[^ ]+/", line)))
        driver.get(url)
        driver.find_element(By.ID, "references").send_keys("\n".join(str(p.resolve()) for p in references))
        driver.find_element(By.ID, "queries").send_keys("\n".join(str(p.resolve()) for p in queries))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 300).until(lambda d: d.find_elements(By.ID, "scores") or d.find_elements(By.ID, "error"))
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1240, height + 140)  # the window's frame takes part of its height
        driver.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
