"""JupyterLab in headless Chromium for the browser tests (tests/notebook/test_browser*.py): a
network namespace of their own, the server, the browser, running a cell and reading what it
shows. Screenshots go to test-artifacts/<test name>/. Playwright is imported only by
`chromium` (the test modules skip first when there is no browser)."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat

from . import ROOT

# Generous waits: a loaded 2-core machine (CI, two busy loops) can take a minute and more to
# start a kernel or redraw; a wait ends in a clear failure, never in a hang.
WAIT_MS = 180_000

CHROMIUM = "/usr/bin/chromium"


def require_browser() -> None:
    """Skip the calling test module where Chromium is not installed (unless required)."""
    import pytest
    if not os.path.exists(CHROMIUM) and not os.environ.get("NBCLUSTER_REQUIRE_BROWSER"):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)",
                    allow_module_level=True)
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "nbcluster-browser-test"

DIALOGS: list[str] = []   # what JupyterLab's own dialogs said during the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shots_dir(name: str) -> Path:
    """test-artifacts/<name>/, emptied: where a test's screenshots go."""
    shots = ARTIFACTS / name
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    return shots


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


@contextlib.contextmanager
def network_namespace() -> Iterator[str | None]:
    """A network namespace of our own, with only loopback, for JupyterLab, its kernel (and
    so the cluster) and Chromium. Chromium aborts the requests in flight
    (ERR_NETWORK_CHANGED) whenever an interface of its namespace changes, and the cross-host
    tests running beside this one add and remove veth interfaces in the root namespace all
    the time: a theme or settings request failed, and JupyterLab's error dialog then covered
    the notebook. Without root (a developer's run), None: the shared namespace."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield None
        return
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                               text=True).stdout.splitlines():
        stale = line.split()[0] if line.startswith("nbct-browser-") else None
        if stale and not os.path.exists(f"/proc/{stale.rsplit('-', 1)[1]}"):
            subprocess.run(["ip", "netns", "del", stale])   # left by a killed run of ours
    name = f"nbct-browser-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def in_netns(netns: str | None) -> list[str]:
    """The command prefix that runs a program in netns (none for the shared namespace)."""
    return ["ip", "netns", "exec", netns] if netns else []


@contextlib.contextmanager
def jupyterlab(root: Path, netns: str | None) -> Iterator[str]:
    """A JupyterLab server serving `root` (notebooks may be written there while it runs);
    yields its base URL. Its log: root/lab.log."""
    # JupyterLab 4.6 asks "Would you like to get notified about official Jupyter news?" in a
    # pop-up over the notebook unless fetchNews is set: "false" in the app settings' overrides.
    settings = root / "lab-settings"
    settings.mkdir()
    (settings / "overrides.json").write_text(json.dumps(
        {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                          "checkForUpdates": False}}))
    port = free_port()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / "config"),
               JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    proc = subprocess.Popen(   # `ip netns exec` execs the server: proc is JupyterLab itself
        [*in_netns(netns), sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}",
         f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly", f"--LabApp.app_settings_dir={settings}",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=subprocess.DEVNULL,
        stderr=open(root / "lab.log", "w"))  # noqa: SIM115 - JupyterLab's, for its life
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, netns, proc, root / "lab.log")
        yield base
    finally:
        proc.send_signal(signal.SIGINT)   # the server shuts its kernels down, then exits
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_until_up(base: str, netns: str | None, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        try:
            if netns is None:
                urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2)
            else:   # the server listens on its namespace's loopback: ask from in there
                subprocess.run([*in_netns(netns), sys.executable, "-c",
                                "import sys, urllib.request; "
                                "urllib.request.urlopen(sys.argv[1], timeout=2)",
                                f"{base}/api/status?token={TOKEN}"],
                               check=True, capture_output=True, timeout=30)
            return
        except (OSError, subprocess.SubprocessError):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("JupyterLab did not start:\n"
                                   + log.read_text()[-3000:]) from None
            time.sleep(0.3)


@contextlib.contextmanager
def chromium(tmp_path: Path, netns: str | None, shots: Path) -> Iterator:
    """A headless Chromium page (Playwright's sync API, its actions' timeout WAIT_MS), in
    netns. If the block fails, each page's screenshot is saved as shots/failure.png, and
    what JupyterLab's dialogs said in shots/dialogs.txt."""
    from playwright import sync_api
    executable = CHROMIUM
    if netns is not None:   # Chromium in the server's namespace (Playwright talks over a pipe)
        executable = str(tmp_path / "chromium-in-netns")
        Path(executable).write_text(f'#!/bin/sh\nexec ip netns exec {netns} {CHROMIUM} "$@"\n')
        os.chmod(executable, 0o755)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)   # every click and fill waits as long
            yield page
        except BaseException:
            for page in browser.contexts[0].pages if browser.contexts else ():
                page.screenshot(path=str(shots / "failure.png"))   # what the page showed
            (shots / "dialogs.txt").write_text("\n---\n".join(DIALOGS))
            raise
        finally:
            browser.close()


def open_notebook(page, url: str) -> None:
    """Open the notebook at url and wait (boundedly) for its kernel."""
    from playwright import sync_api
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=WAIT_MS)
    # Usually the kernel is idle within seconds, but under load the indicator was seen to
    # miss the kernel's first idle (the kernel was up, per the server's log): run_cell
    # presses again until the cell runs, and fails clearly if it never does
    with contextlib.suppress(sync_api.Error):
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']",
                               timeout=60_000)


def dismiss_dialogs(page) -> None:
    """Close a JupyterLab dialog over the notebook (seen under load: a resource that failed
    to load, a kernel choice), noting what it said: the test is about nbcluster's widgets,
    and a dialog would otherwise swallow every click until the test times out."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count():
        DIALOGS.append(dialog.first.inner_text()[:300])
        button = dialog.first.locator(".jp-Dialog-button.jp-mod-accept")
        if button.count():
            button.first.click()
        else:
            page.keyboard.press("Escape")


def cell(page, index: int):
    return page.locator(".jp-Notebook .jp-Cell").nth(index)


def start_cell(page, index: int, timeout_s: float = 180) -> None:
    """Select cell `index` and run it with Shift+Enter; return once it is running or done."""
    prompt = cell(page, index).locator(".jp-InputArea-prompt")
    deadline, pressed = time.monotonic() + timeout_s, 0.0
    while time.monotonic() < deadline:
        text = prompt.inner_text().strip()
        if text not in ("", "[ ]:"):
            return
        dismiss_dialogs(page)
        if time.monotonic() - pressed > 3:
            # not queued yet (a keypress before the notebook took focus is lost): press
            cell(page, index).locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            pressed = time.monotonic()
        time.sleep(0.2)
    raise TimeoutError(f"cell {index} did not start: prompt {prompt.inner_text()!r}")


def wait_cell_done(page, index: int, timeout_s: float = 180) -> None:
    """Wait until cell `index`'s prompt shows a number."""
    prompt = cell(page, index).locator(".jp-InputArea-prompt")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if prompt.inner_text().strip() not in ("", "[ ]:", "[*]:"):
            return
        dismiss_dialogs(page)
        time.sleep(0.2)
    raise TimeoutError(f"cell {index} did not finish: prompt {prompt.inner_text()!r}")


def run_cell(page, index: int, timeout_s: float = 180) -> None:
    """Select cell `index`, run it with Shift+Enter, wait until its prompt shows a number."""
    deadline = time.monotonic() + timeout_s
    start_cell(page, index, timeout_s)
    wait_cell_done(page, index, max(deadline - time.monotonic(), 1.0))
