"""Retake docs/images/console.png: the web console in headless Chromium (tests/browser_support.py)
against a server of its own in a temporary directory: two finished exports, one running (shown
live), a second download refused with its countdown, the batch tasks with their outcomes.

    .venv/bin/python scripts/console_screenshot.py [--out docs/images/console.png]
"""

from __future__ import annotations

import argparse
import http.client
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser_support import start_browser  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from iotda_export_server.domain.batches import seed_batch_task  # noqa: E402
from iotda_export_server.runner.supervisor import spawn_worker  # noqa: E402
from iotda_export_server.testing import ServerThread  # noqa: E402


def call(port: int, creds: dict, method: str, rest: str, body: dict | None = None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"X-Auth-Token": creds["token"], "Content-Type": "application/json"}
        conn.request(method, f"/v5/iot/{creds['project_id']}{rest}", body=json.dumps(body) if body else None,
                     headers=headers)
        r = conn.getresponse()
        data = r.read()
        if r.status >= 300:
            raise SystemExit(f"{method} {rest}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else {}
    finally:
        conn.close()


def until(what: str, predicate, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / "docs" / "images" / "console.png")
    args = parser.parse_args(argv)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="iotda-console-shot-"))
    server = ServerThread(tmp / "data", workers=0, http_addr="127.0.0.1:0")
    creds, port = server.admin, server.http_port
    tasks = [seed_batch_task(server.store, creds["project_id"], "", n, seed=n) for n in (30000, 65600, 120000)]
    worker = spawn_worker(server.config.worker_config(), "screenshot")
    driver = None
    try:
        done = [call(port, creds, "POST", "/export-tasks", {"resource_type": "BatchTask",
                                                            "resource_condition": {"task_id": t}})["export_task_id"]
                for t in tasks[:2]]
        for export_id in done:
            until(f"export {export_id}", lambda: call(port, creds, "GET", f"/export-tasks/{export_id}")["status"]
                  == "Success")
        worker.terminate()
        worker.wait(15)
        call(port, creds, "POST", "/export-tasks", {"resource_type": "BatchTask", "resource_condition": {
            "task_id": tasks[2]}, "app_type": "APP"})  # no worker now: it stays Processing, watched live
        driver = start_browser(tmp / "downloads")
        driver.set_window_size(1400, 1640)
        driver.get(f"{server.http_url}/console/")
        driver.find_element(By.ID, "project-id").send_keys(creds["project_id"])
        driver.find_element(By.ID, "token").send_keys(creds["token"])
        driver.find_element(By.ID, "sign-in-button").click()
        wait = WebDriverWait(driver, 30, poll_frequency=0.05)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#exports-body .live"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#batches-body tr[data-task-id]"))
        buttons = driver.find_elements(By.CSS_SELECTOR, "#exports-body button[data-action=download]:enabled")
        buttons[0].click()
        wait.until(lambda d: "Downloaded" in d.find_element(By.ID, "notice").text)
        driver.find_elements(By.CSS_SELECTOR, "#exports-body button[data-action=download]")[1].click()
        wait.until(lambda d: d.find_element(By.ID, "download-wait").is_displayed())
        driver.execute_script("window.scrollTo(0, 0)")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        if driver is not None:
            driver.quit()
        if worker.poll() is None:
            worker.kill()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
