"""A real browser for the console's tests: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (never Selenium Manager: nothing is downloaded), with the flags that keep it
from reaching for the network on a closed machine, and a downloads folder of the test's own.

Chromium missing is a test failure naming the command that installs it, never a skip.
"""

from __future__ import annotations

import pathlib
import tempfile

import pytest

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMEDRIVER = pathlib.Path("/usr/bin/chromedriver")
INSTALL_HINT = "apt-get install -y chromium chromium-driver (`make test` and .ci/run install them when missing)"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
         "--window-size=1400,1000", "--lang=en-US")
# Browser log lines that are expected on their own: a refused call (401, 403, 404) and a server
# that is down while the console reconnects. Anything else at SEVERE (a script error, a
# Content-Security-Policy violation) is a failure.
EXPECTED_SEVERE = ("Failed to load resource",)
CSP_RECORDER = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(`${e.effectiveDirective} ${e.blockedURI || 'inline'} ${e.sourceFile}:${e.lineNumber}`);
});
"""


def start_browser(download_dir: pathlib.Path):
    """A fresh headless Chromium (its own profile) whose downloads land in `download_dir`."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the console's browser tests need them; {INSTALL_HINT}",
                    pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='iotda-chromium-')}")
    options.add_experimental_option("prefs", {
        "download.default_directory": str(download_dir), "download.prompt_for_download": False,
        "download.directory_upgrade": True, "safebrowsing.enabled": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    # Every Content-Security-Policy violation of every page, from before its first byte is parsed
    # (an inline style attribute is refused at parse time, before any script of the page runs).
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": CSP_RECORDER})
    driver.set_page_load_timeout(30)
    return driver


def unexpected_browser_errors(driver) -> list[str]:
    """SEVERE browser log lines since the last call, but for EXPECTED_SEVERE ones."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and not any(x in e["message"] for x in EXPECTED_SEVERE)]


AXE = pathlib.Path(__file__).resolve().parent / "browser" / "node_modules" / "axe-core" / "axe.min.js"
AXE_RUN = """
const done = arguments[arguments.length - 1];
axe.run(document, {resultTypes: ['violations']}).then(
  (r) => done(r.violations.map((v) => `${v.id} (${v.impact}): ${v.help}: ` +
                                      v.nodes.map((n) => n.target.join(' ')).slice(0, 5).join(', '))),
  (e) => done([`axe failed: ${e}`]));
"""


def accessibility_violations(driver) -> list[str]:
    """axe-core's violations of the page as it is now (every rule axe runs by default: names,
    labels, roles, contrast, ...). The page's CSP must be bypassed for axe's script to run."""
    if not AXE.exists():
        pytest.fail(f"{AXE} missing: `make test` installs it (npm ci --prefix tests/browser)", pytrace=False)
    driver.execute_script(AXE.read_text(encoding="utf-8"))
    return driver.execute_async_script(AXE_RUN)


def csp_violations(driver) -> list[str]:
    """The Content-Security-Policy violations of the page shown now (CSP_RECORDER)."""
    return driver.execute_script("return window.__cspViolations || ['the recorder did not run']")
