"""The MLflow UI as ``make ui`` serves it (``pipeline.runtime.mlflow_ui``, on 127.0.0.1) opens on the
tiny study's runs table, and shows a metric (headless Chromium)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import REPO
from tests.workflow.browser import headless_chromium

pytestmark = pytest.mark.workflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(study):
    """``(base URL, the runs link it printed)`` of ``python -m pipeline.runtime.mlflow_ui``."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.runtime.mlflow_ui",
            "--db",
            "results/mlflow.db",
            "--port",
            str(port),
        ],
        cwd=study,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        printed = [process.stdout.readline() for _ in range(2)]
        link = printed[1].split(": ", 1)[1].strip()
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("the MLflow server did not come up in 60 s")
        yield url, link
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_ui_lists_the_study_runs_and_a_metric(study, mlflow_server):
    driver = headless_chromium(1400)
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pipeline.runtime.tracking import _client

    client = _client(f"sqlite:///{study / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    train_run = next(
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags["rule"] == "train"
    )

    screenshots = study / "results" / "screenshots"
    screenshots.mkdir(parents=True, exist_ok=True)
    base, link = mlflow_server
    assert link == f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    try:
        # The printed link lands on the runs table, in the model-training layout.
        driver.get(link)
        WebDriverWait(driver, 60).until(lambda d: "train_multi_grpo" in d.page_source)
        page = driver.page_source
        for name in ("pretrain_base", "train_flow_grpo", "sample_eval_base", "report", "Run Name"):
            assert name in page, f"{name} not shown"
        driver.save_screenshot(str(screenshots / "experiment.png"))
        # From the experiments list: the layout toggle, once, then a click on the experiment.
        driver.get(f"{base}/#/experiments")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.LINK_TEXT, "tiny"))
        driver.find_element(By.XPATH, "//*[text()='Model training']").click()
        WebDriverWait(driver, 30).until(
            lambda d: "machine_learning" in d.execute_script("return JSON.stringify(localStorage)")
        )
        for attempt in range(3):  # a click while the list re-renders can land on a stale element
            driver.get(f"{base}/#/experiments")  # the list as a returning user opens it
            WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.LINK_TEXT, "tiny"))
            try:
                driver.find_elements(By.LINK_TEXT, "tiny")[-1].click()
                WebDriverWait(driver, 30).until(lambda d: "train_multi_grpo" in d.page_source)
                break
            except (StaleElementReferenceException, TimeoutException):
                if attempt == 2:
                    raise
        assert "/runs" in driver.current_url and "Detect Issues" not in driver.page_source
        driver.save_screenshot(str(screenshots / "after_click.png"))
        driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{train_run.info.run_id}")
        WebDriverWait(driver, 60).until(lambda d: "ocr_mean" in d.page_source)
        driver.save_screenshot(str(screenshots / "train_run.png"))
    finally:
        driver.quit()
    assert (screenshots / "experiment.png").stat().st_size > 10_000
