"""The web console in a real browser (headless Chromium, Selenium) against real `iotda-export serve`
processes: sign in, create an export from the batch-task picker, watch its progress live to 100 %,
download the zip and open it, the 30 s countdown, a bad token, a second user who sees nothing of
the first, paging, batch tasks with their outcome counts, cancel and delete, and the progress stream
reconnecting across a restart of the server. No page ever holds the token in a URL, and the server's
log never shows it.
"""

from __future__ import annotations

import http.client
import json
import pathlib
import re
import secrets
import socket
import time
import zipfile

import pytest
from browser_support import accessibility_violations, csp_violations, start_browser, unexpected_browser_errors
from pg_support import Proc, run_cli
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from iotda_export_server.app import seed

HTTP_LINE = re.compile(r"listening on http://(\S+) \(HTTP/JSON gateway\)")
REQUEST_ID = re.compile(r"request id ([0-9a-f]{32})")


class Served:
    """`iotda-export serve` in a process of its own, with its data directory and HTTP address."""

    def __init__(self, name: str, tmp: pathlib.Path, workers: int, http_port: int = 0,
                 data_dir: pathlib.Path | None = None):
        self.name = name
        self.data_dir = data_dir or tmp / f"{name}-data"
        self.tmp = tmp
        self.proc = Proc(name, ["serve", "--data-dir", str(self.data_dir), "--grpc-addr", "127.0.0.1:0",
                                "--http-addr", f"127.0.0.1:{http_port}", "--workers", str(workers),
                                "--log-level", "INFO"], tmp)
        self.url = "http://" + self.proc.wait_line(HTTP_LINE, timeout=60).group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.admin = json.loads((self.data_dir / "credentials.json").read_text())

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")

    def stop(self) -> None:
        problem = self.proc.stop()
        assert problem is None, problem

    def cli(self, *args: str) -> dict:
        return json.loads(run_cli(*args, "--data-dir", str(self.data_dir), "--json").stdout)

    def seed(self, subtasks: int, project: str | None = None) -> str:
        """A finished batch task (what `iotda-export seed` loads, in this process: it is faster)."""
        return seed(self.data_dir, subtasks, project_id=project)

    def add_user(self, name: str) -> dict:
        return self.cli("principal", "add", "--user", name, "--project", f"proj-{secrets.token_hex(6)}")

    def api(self, creds: dict, method: str, rest: str, body: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            headers = {"X-Auth-Token": creds["token"]}
            data = None
            if body is not None:
                data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
            conn.request(method, f"/v5/iot/{creds['project_id']}{rest}", body=data, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            return r.status, (json.loads(raw) if raw and r.getheader("Content-Type", "").startswith(
                "application/json") else raw)
        finally:
            conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served("console-serve", tmp_path_factory.mktemp("console"), workers=1)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads):
    driver = start_browser(downloads)
    yield driver
    driver.quit()


TOKENS: list[str] = []  # every token the tests typed: none may show in a URL or a log


@pytest.fixture
def page(browser, served):
    """The browser on a fresh console page (no session); afterwards no CSP violation on the page,
    no script error in the browser's log, no token in any URL it loaded, nothing in localStorage."""
    browser.get(served.url + "/console/")
    browser.execute_script("sessionStorage.clear(); localStorage.clear();")
    browser.get(served.url + "/console/")
    unexpected_browser_errors(browser)  # drop what an earlier test left
    yield browser
    assert csp_violations(browser) == []
    assert unexpected_browser_errors(browser) == []
    urls = [browser.current_url] + browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    for token in TOKENS:
        assert not any(token in u for u in urls), "a token in a URL"
    assert browser.execute_script("return localStorage.length") == 0


def wait(driver, condition, timeout: float = 30, what: str = "the console"):
    def safe(d):
        try:
            return condition(d)
        except StaleElementReferenceException:  # the row was re-rendered meanwhile: look again
            return False
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(safe, f"timed out waiting for {what}")


def sign_in(driver, served: Served, creds: dict, token: str | None = None, project: str | None = None) -> None:
    token = token if token is not None else creds["token"]
    TOKENS.append(token)
    driver.find_element(By.ID, "project-id").send_keys(project or creds["project_id"])
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in-button").click()


def signed_in(driver, served: Served, creds: dict) -> None:
    sign_in(driver, served, creds)
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed(), what="the signed-in view")
    wait(driver, lambda d: d.find_element(By.ID, "exports-page").text, what="the first list of export tasks")


def row(driver, export_id: str):
    return driver.find_element(By.CSS_SELECTOR, f'tr[data-export-id="{export_id}"]')


def row_state(driver, export_id: str) -> dict:
    r = row(driver, export_id)
    return {"status": r.get_attribute("data-status"),
            "progress": int(r.find_element(By.TAG_NAME, "progress").get_attribute("value")),
            "text": r.text}


def messages(driver) -> list[str]:
    return [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#messages .message")]


def notice(driver) -> str:
    return driver.find_element(By.ID, "notice").text


def record_rows(driver) -> None:
    """Records every state the export rows show (a MutationObserver): what the page displayed
    between two looks of the test, too."""
    driver.execute_script("""
      window.__rows = [];
      const body = document.getElementById('exports-body');
      const note = () => { for (const r of body.querySelectorAll('tr[data-export-id]')) {
        const p = r.querySelector('progress');
        window.__rows.push({id: r.dataset.exportId, status: r.dataset.status, progress: p ? p.value : null,
          live: !!r.querySelector('.live'), reconnecting: !!r.querySelector('.reconnecting')}); } };
      new MutationObserver(note).observe(body, {subtree: true, childList: true, attributes: true});
      note();""")


def recorded(driver, export_id: str) -> list[dict]:
    return [r for r in driver.execute_script("return window.__rows") if r["id"] == export_id]


def create_from_picker(driver, task_id: str) -> str:
    select = Select(wait(driver, lambda d: d.find_element(By.ID, "create-task")))
    wait(driver, lambda d: any(o.get_attribute("value") == task_id for o in select.options),
         what=f"batch task {task_id} in the picker")
    select.select_by_value(task_id)
    # Every text the notice line shows from the click on: a small export can reach Success, and its
    # watcher say so in the same line, before the test looks at it.
    driver.execute_script("""
      window.__notices = [];
      const box = document.getElementById('notice');
      new MutationObserver(() => window.__notices.push(box.textContent))
        .observe(box, {subtree: true, childList: true, characterData: true});""")
    driver.find_element(By.ID, "create-button").click()

    def created(d):
        for text in d.execute_script("return window.__notices") + [notice(d)]:
            if m := re.search(r"Export task ([0-9a-f]{24}) created", text):
                return m
        return None
    export_id = wait(driver, created, what="the create").group(1)
    wait(driver, lambda d: row(d, export_id), what="the new task's row")
    return export_id


def files_in(directory: pathlib.Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def downloaded(directory: pathlib.Path, export_id: str, before: dict[str, int]) -> pathlib.Path:
    """The zip the browser finished saving since `before` (a new name, or the same name saved
    again: the browser may overwrite), with no partial file left."""
    def done():
        now = files_in(directory)
        if any(n.endswith(".crdownload") for n in now):
            return None
        new = [n for n, t in now.items() if before.get(n) != t
               and n.startswith(f"export-{export_id}") and n.endswith(".zip")]
        return directory / new[0] if new else None
    deadline = time.monotonic() + 30
    while (path := done()) is None:
        assert time.monotonic() < deadline, f"no download of export {export_id} in {sorted(directory.iterdir())}"
        time.sleep(0.05)
    return path


# -- the tests ------------------------------------------------------------------------------------

def test_sign_in_create_watch_live_to_100_download_and_the_30_s_countdown(page, served, downloads):
    task_id = served.seed(60000)
    signed_in(page, served, served.admin)
    assert page.find_element(By.ID, "whoami-project").text == served.admin["project_id"]
    session = json.loads(page.execute_script("return sessionStorage.getItem('iotda-export-console')"))
    assert session["token"] == served.admin["token"] and page.find_element(By.ID, "token").get_attribute("value") == ""
    record_rows(page)
    export_id = create_from_picker(page, task_id)
    wait(page, lambda d: row_state(d, export_id)["status"] == "Success", timeout=120, what="Success")
    final = row_state(page, export_id)
    assert final["progress"] == 100 and "100 %" in final["text"] and "60,000" in final["text"]
    seen = recorded(page, export_id)
    assert any(r["live"] for r in seen), "the progress stream never showed as live"
    progress = [r["progress"] for r in seen]
    assert progress == sorted(progress) and progress[-1] == 100, progress
    assert any(r["status"] == "Processing" for r in seen)
    streamed = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(u.endswith(f"/export-tasks/{export_id}/progress") for u in streamed), "no WatchProgress stream"
    wait(page, lambda d: f"Export {export_id}: Success." in notice(d), what="the stream's last word")

    # Download: the browser saves the zip; it opens and is the server's file, byte for byte.
    before = files_in(downloads)
    row(page, export_id).find_element(By.CSS_SELECTOR, "button[data-action=download]").click()
    saved = downloaded(downloads, export_id, before)
    with zipfile.ZipFile(saved) as z:
        assert z.namelist() == [f"export-{export_id}.xls"]
        assert z.testzip() is None
    assert saved.read_bytes() == (served.data_dir / "files" / f"{export_id}.zip").read_bytes()
    wait(page, lambda d: "Downloaded export-" in notice(d), what="the download's notice")

    # A second download within 30 s: the platform's refusal as it came, with its request id, and a
    # countdown; the buttons wait for it.
    row(page, export_id).find_element(By.CSS_SELECTOR, "button[data-action=download]").click()
    text = wait(page, lambda d: next((m for m in messages(d) if "IOTDA.018003" in m), None), what="the refusal")
    assert "HTTP 403" in text and f"Download of export {export_id} refused" in text
    request_id = REQUEST_ID.search(text).group(1)
    assert request_id in served.log(), "the request id shown is not the server's"
    countdown = page.find_element(By.ID, "download-wait")
    first = int(re.search(r"in (\d+) s", wait(page, lambda d: countdown.is_displayed() and countdown.text)).group(1))
    assert 1 <= first <= 30
    assert not row(page, export_id).find_element(By.CSS_SELECTOR, "button[data-action=download]").is_enabled()
    wait(page, lambda d: int(re.search(r"in (\d+) s", countdown.text).group(1)) < first, timeout=5,
         what="the countdown to tick")
    wait(page, lambda d: not countdown.is_displayed(), timeout=first + 5, what="the countdown's end")
    button = row(page, export_id).find_element(By.CSS_SELECTOR, "button[data-action=download]")
    assert button.is_enabled()
    before = files_in(downloads)
    button.click()
    wait(page, lambda d: "Downloaded export-" in notice(d), what=f"the download's notice: {messages(page)}")
    with zipfile.ZipFile(downloaded(downloads, export_id, before)) as z:
        assert z.namelist() == [f"export-{export_id}.xls"]
    for token in TOKENS:
        assert token not in served.log(), "a token in the server's log"


def test_a_bad_token_is_refused_and_nothing_is_kept(page, served):
    sign_in(page, served, served.admin, token="0" * 43)
    text = wait(page, lambda d: next(iter(messages(d)), None), what="the refusal")
    assert "Sign-in failed" in text and "IOTDA.000002" in text and "HTTP 401" in text and REQUEST_ID.search(text)
    assert not page.find_element(By.ID, "app").is_displayed()
    assert page.find_element(By.ID, "sign-in").is_displayed()
    assert page.execute_script("return sessionStorage.length") == 0


def test_a_second_user_sees_none_of_the_first_users_tasks(page, served, tmp_path):
    first_task = served.seed(500)
    status, created = served.api(served.admin, "POST", "/export-tasks", {
        "resource_type": "BatchTask", "resource_condition": {"task_id": first_task}})
    assert status == 201
    bob = served.add_user(f"bob-{secrets.token_hex(3)}")
    TOKENS.append(bob["token"])
    # Bob signs in with his credentials.json, read by the page (never uploaded).
    creds_file = tmp_path / "bob.json"
    creds_file.write_text(json.dumps(bob))
    page.find_element(By.ID, "credentials-file").send_keys(str(creds_file))
    wait(page, lambda d: "taken from bob.json" in notice(d), what="the fields filled from the file")
    assert page.find_element(By.ID, "project-id").get_attribute("value") == bob["project_id"]
    assert page.find_element(By.ID, "token").get_attribute("value") == bob["token"]
    page.find_element(By.ID, "sign-in-button").click()
    wait(page, lambda d: d.find_element(By.ID, "app").is_displayed(), what="the signed-in view")
    wait(page, lambda d: d.find_element(By.ID, "exports-page").text, what="the first list of export tasks")
    body = page.find_element(By.ID, "exports-body")
    wait(page, lambda d: "No export tasks yet" in body.text, what="an empty list")
    assert page.find_elements(By.CSS_SELECTOR, "#exports-body tr[data-export-id]") == []
    assert page.find_element(By.ID, "exports-page").text == "No tasks"
    wait(page, lambda d: "No firmwareUpgrade batch tasks" in d.find_element(By.ID, "create-task").text,
         what="an empty picker")
    wait(page, lambda d: "No batch tasks" in d.find_element(By.ID, "batches-body").text, what="no batch tasks")
    assert created["export_task_id"] not in page.page_source and first_task not in page.page_source
    # Bob's token with the first user's project: the platform's refusal, shown.
    page.find_element(By.ID, "sign-out").click()
    wait(page, lambda d: d.find_element(By.ID, "sign-in").is_displayed(), what="the sign-in form")
    assert page.execute_script("return sessionStorage.length") == 0
    sign_in(page, served, bob, project=served.admin["project_id"])
    text = wait(page, lambda d: next(iter(messages(d)), None), what="the refusal")
    assert "IOTDA.000003" in text and "HTTP 403" in text
    assert not page.find_element(By.ID, "app").is_displayed()


def test_batch_tasks_with_their_outcome_counts_and_the_picker(page, served):
    task_id = served.seed(777)
    status, listed = served.api(served.admin, "GET", "/batchtasks?task_type=firmwareUpgrade&limit=50")
    progress = next(t for t in listed["batchtasks"] if t["task_id"] == task_id)["task_progress"]
    signed_in(page, served, served.admin)
    r = wait(page, lambda d: d.find_element(By.CSS_SELECTOR, f'#batches-body tr[data-task-id="{task_id}"]'),
             what="the batch task's row")
    assert r.find_element(By.CSS_SELECTOR, "td.num").get_attribute("data-total") == "777"
    shown = {li.get_attribute("data-outcome"): int(li.find_element(By.TAG_NAME, "b").text.replace(",", ""))
             for li in r.find_elements(By.CSS_SELECTOR, "ul.outcomes li")}
    assert shown == {k: v for k, v in progress.items() if k != "total" and v}, (shown, progress)
    assert sum(shown.values()) == 777
    Select(page.find_element(By.ID, "batches-status")).select_by_value("Processing")
    wait(page, lambda d: not d.find_elements(By.CSS_SELECTOR, f'#batches-body tr[data-task-id="{task_id}"]'),
         what="the status filter")
    Select(page.find_element(By.ID, "batches-status")).select_by_value("")
    wait(page, lambda d: d.find_element(By.CSS_SELECTOR, f'#batches-body tr[data-task-id="{task_id}"] button')).click()
    wait(page, lambda d: Select(d.find_element(By.ID, "create-task")).first_selected_option.get_attribute("value")
         == task_id, what="the picker to take the batch task")
    assert page.switch_to.active_element.get_attribute("id") == "create-task"


def test_paging_by_limit_marker_and_offset(page, served):
    carol = served.add_user(f"carol-{secrets.token_hex(3)}")
    ids = []
    for _ in range(12):
        task = served.seed(20, project=carol["project_id"])
        status, created = served.api(carol, "POST", "/export-tasks", {
            "resource_type": "BatchTask", "resource_condition": {"task_id": task}})
        assert status == 201
        ids.append(created["export_task_id"])
        deadline = time.monotonic() + 60
        while served.api(carol, "GET", f"/export-tasks/{ids[-1]}")[1]["status"] == "Processing":
            assert time.monotonic() < deadline, "an export did not finish"
            time.sleep(0.05)
    newest_first = sorted(ids, reverse=True)
    signed_in(page, served, carol)

    def shown():
        return [r.get_attribute("data-export-id")
                for r in page.find_elements(By.CSS_SELECTOR, "#exports-body tr[data-export-id]")]
    wait(page, lambda d: shown() == newest_first[:10], what="page 1")
    assert page.find_element(By.ID, "exports-page").text == "Page 1 of 2 · tasks 1–10 of 12"
    assert not page.find_element(By.ID, "exports-prev").is_enabled()
    page.find_element(By.ID, "exports-next").click()  # marker
    wait(page, lambda d: shown() == newest_first[10:], what="page 2")
    assert page.find_element(By.ID, "exports-page").text == "Page 2 of 2 · tasks 11–12 of 12"
    assert not page.find_element(By.ID, "exports-next").is_enabled()
    page.find_element(By.ID, "exports-prev").click()
    wait(page, lambda d: shown() == newest_first[:10], what="page 1 again")
    Select(page.find_element(By.ID, "exports-limit")).select_by_visible_text("20")  # limit
    wait(page, lambda d: shown() == newest_first, what="one page of 20")
    Select(page.find_element(By.ID, "exports-limit")).select_by_visible_text("10")
    wait(page, lambda d: shown() == newest_first[:10], what="page 1 of 10")
    page.find_element(By.ID, "exports-goto").send_keys("2")  # offset
    page.find_element(By.ID, "exports-goto-button").click()
    wait(page, lambda d: shown() == newest_first[10:], what="page 2 by offset")
    page.find_element(By.ID, "exports-prev").click()
    wait(page, lambda d: shown() == newest_first[:10], what="back to page 1")


def test_cancel_delete_and_the_stream_reconnecting_across_a_restart(browser, tmp_path):
    """Its own server: without workers first (exports stay Processing), then stopped, and started
    again with a worker on the same port while the page keeps watching."""
    port = free_port()
    first = Served("console-restart-1", tmp_path, workers=0, http_port=port)
    data_dir = first.data_dir
    second = None
    try:
        keep, gone = first.seed(40000), first.seed(300)
        browser.get(first.url + "/console/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(first.url + "/console/")
        unexpected_browser_errors(browser)
        signed_in(browser, first, first.admin)
        record_rows(browser)

        # Cancel, then delete (a second click confirms).
        cancelled = create_from_picker(browser, gone)
        wait(browser, lambda d: "live" in row_state(d, cancelled)["text"], what="the live stream")
        assert row_state(browser, cancelled)["status"] == "Processing"
        row(browser, cancelled).find_element(By.CSS_SELECTOR, "button[data-action=cancel]").click()
        wait(browser, lambda d: row_state(d, cancelled)["status"] == "Failed", what="the cancel")
        assert "cancelled" in row_state(browser, cancelled)["text"]
        delete = row(browser, cancelled).find_element(By.CSS_SELECTOR, "button[data-action=delete]")
        delete.click()
        assert delete.text == "Confirm delete" and first.api(first.admin, "GET", f"/export-tasks/{cancelled}")[0] == 200
        delete.click()
        wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-export-id="{cancelled}"]'),
             what="the row to go")
        assert first.api(first.admin, "GET", f"/export-tasks/{cancelled}")[0] == 404

        # Watching while the server goes away and comes back.
        export_id = create_from_picker(browser, keep)
        wait(browser, lambda d: "live" in row_state(d, export_id)["text"], what="the live stream")
        first.stop()
        wait(browser, lambda d: "reconnecting…" in row_state(d, export_id)["text"], timeout=30,
             what="reconnecting…")
        assert "reconnecting…" in notice(browser)
        second = Served("console-restart-2", tmp_path, workers=1, http_port=port, data_dir=data_dir)
        wait(browser, lambda d: row_state(d, export_id)["status"] == "Success", timeout=120,
             what="Success after the restart")
        seen = recorded(browser, export_id)
        progress = [r["progress"] for r in seen]
        assert progress == sorted(progress) and progress[-1] == 100
        reconnecting = [i for i, r in enumerate(seen) if r["reconnecting"]]
        assert reconnecting and any(r["live"] for r in seen[reconnecting[-1]:]), "never live again"
        assert browser.find_element(By.ID, "app").is_displayed()  # the same page, still signed in
        assert csp_violations(browser) == []
        assert unexpected_browser_errors(browser) == []
        for served in (first, second):
            assert first.admin["token"] not in served.log()
    finally:
        if second is not None:
            second.stop()
        else:
            first.proc.stop()


def test_every_view_passes_axe_accessibility_checks_in_light_and_dark(browser, served):
    """axe-core on the sign-in form, a refusal, the signed-in console with tasks and batch tasks, in
    both colour schemes; and axe does find a violation put there on purpose."""
    task_id = served.seed(1200)
    browser.set_script_timeout(60)
    browser.execute_cdp_cmd("Page.setBypassCSP", {"enabled": True})  # axe's script is not the page's
    try:
        browser.get(served.url + "/console/")
        browser.execute_script("sessionStorage.clear()")
        browser.get(served.url + "/console/")
        assert accessibility_violations(browser) == [], "the sign-in form"
        sign_in(browser, served, served.admin, token="0" * 43)
        wait(browser, lambda d: messages(d), what="the refusal")
        assert accessibility_violations(browser) == [], "a refusal"
        browser.get(served.url + "/console/")
        signed_in(browser, served, served.admin)
        export_id = create_from_picker(browser, task_id)
        wait(browser, lambda d: row_state(d, export_id)["status"] == "Success", timeout=120, what="Success")
        wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#batches-body tr[data-task-id]"), what="batch tasks")
        for scheme in ("light", "dark"):
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
                "features": [{"name": "prefers-color-scheme", "value": scheme}]})
            assert accessibility_violations(browser) == [], f"the console ({scheme})"
        browser.execute_script("document.getElementById('notice').append(document.createElement('input'))")
        found = accessibility_violations(browser)
        assert any(v.startswith("label ") for v in found), found
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        browser.execute_cdp_cmd("Page.setBypassCSP", {"enabled": False})
        browser.get("about:blank")
