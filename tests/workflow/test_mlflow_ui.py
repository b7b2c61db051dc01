"""The MLflow UI, served on 127.0.0.1, shows the tiny study's runs and a metric (headless Chromium)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(study):
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    process = subprocess.Popen(
        [
            str(mlflow),
            "server",
            "--backend-store-uri",
            f"sqlite:///{study / 'results' / 'mlflow.db'}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=study,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the MLflow server did not come up in 60 s")
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_ui_lists_the_study_runs_and_a_metric(study, mlflow_server):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    from pipeline.tracking import _client

    client = _client(f"sqlite:///{study / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    train_run = next(
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags["rule"] == "train"
    )

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    screenshots = study / "results" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    try:
        driver.get(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs")
        WebDriverWait(driver, 60).until(lambda d: "train_multi_grpo" in d.page_source)
        page = driver.page_source
        for name in ("pretrain_base", "train_flow_grpo", "sample_eval_base", "report"):
            assert name in page, f"run {name} not shown"
        driver.save_screenshot(str(screenshots / "experiment.png"))
        driver.get(f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{train_run.info.run_id}")
        WebDriverWait(driver, 60).until(lambda d: "ocr_mean" in d.page_source)
        driver.save_screenshot(str(screenshots / "train_run.png"))
    finally:
        driver.quit()
    assert (screenshots / "experiment.png").stat().st_size > 10_000
