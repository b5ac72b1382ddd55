"""JupyterLab server, Chromium and result bookkeeping for the browser acceptance tests.

The server is the installed project's own JupyterLab, on loopback with a random port and token,
with isolated user settings (no autosave, no news or update checks, every cell rendered) so that
a run never writes into labs/ and never reaches outside the machine. The browser is a system
Chromium driven by Playwright (Playwright's own browser download cannot work offline).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
LABS_DIR = REPO / "labs"

SERVER_START_TIMEOUT_S = float(os.environ.get("LABKIT_BROWSER_SERVER_TIMEOUT", "300"))
SERVER_STOP_TIMEOUT_S = 60.0

# Chromium flags: as root it needs --no-sandbox; on a closed network the background services
# (component updates, sync, QUIC probes) only produce refused connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless=new",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
CHROMIUM_CANDIDATES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]

# User settings for the test server (JUPYTERLAB_SETTINGS_DIR). Autosave off: running a lab must
# not write its outputs into labs/. windowingMode "none": every cell is laid out, so figures
# below the fold are rendered and the full-page screenshot shows the whole lab.
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}

RESULTS: list[dict] = []  # one row per browser run, printed by pytest_terminal_summary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class JupyterProcess:
    """A JupyterLab started in its own process group, with its log and runtime dir."""

    proc: subprocess.Popen
    port: int
    token: str
    log_path: Path
    runtime_dir: Path | None = None
    _log: object = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def api(self, path: str, method: str = "GET", timeout: float = 30.0):
        req = urllib.request.Request(
            f"{self.url}{path}", method=method,
            headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = SERVER_START_TIMEOUT_S) -> float:
        """Poll /api/status until it answers; returns the seconds it took."""
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"JupyterLab exited with code {self.proc.returncode} before serving "
                    f"{self.url}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                status = self.api("/api/status", timeout=10)
                if isinstance(status, dict) and "started" in status:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise AssertionError(
                    f"JupyterLab did not answer {self.url}/api/status within {timeout:.0f} s:\n"
                    f"{self.log_tail()}")
            time.sleep(1.0)

    def owned_processes(self) -> list[psutil.Process]:
        """The process, its descendants, and any kernel started with our runtime dir."""
        procs: dict[int, psutil.Process] = {}
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            procs[root.pid] = root
            for child in root.children(recursive=True):
                procs[child.pid] = child
        if self.runtime_dir is not None:
            marker = str(self.runtime_dir)
            for p in psutil.process_iter(["cmdline"]):
                with contextlib.suppress(psutil.Error):
                    if any(marker in part for part in (p.info["cmdline"] or [])):
                        procs[p.pid] = p
        return list(procs.values())

    def stop(self) -> list[str]:
        """SIGTERM the group (JupyterLab shuts its kernels down), SIGKILL what is left.

        Returns a description of each process that survived the SIGTERM phase (empty when the
        shutdown was clean); everything is killed either way.
        """
        procs = self.owned_processes()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        # Kernels run in sessions of their own, so the group signal does not reach them: the
        # server stops them on SIGTERM; anything still alive after the grace period is a leak.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=SERVER_STOP_TIMEOUT_S)
        _, alive = psutil.wait_procs(procs, timeout=SERVER_STOP_TIMEOUT_S)
        survivors = []
        for p in alive:
            with contextlib.suppress(psutil.Error):
                survivors.append(f"pid {p.pid}: {' '.join(p.cmdline())[:200]}")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=10)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
        return survivors

    def leftovers(self) -> list[str]:
        """Processes of this server still alive (after stop() this must be empty)."""
        out = []
        for p in self.owned_processes():
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"pid {p.pid}: {' '.join(p.cmdline())[:200]}")
        return out


def launch(cmd: list[str], *, cwd: Path, port: int, token: str, log_path: Path,
           env: dict | None = None, runtime_dir: Path | None = None) -> JupyterProcess:
    """Start `cmd` in a new process group (so the whole tree can be signalled at once)."""
    log = open(log_path, "w")  # closed by JupyterProcess.stop
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return JupyterProcess(proc, port, token, log_path, runtime_dir, log)


@pytest.fixture(scope="session")
def jupyter_tools():
    """The helpers above, for tests that start JupyterLab another way (`make lab`)."""
    return SimpleNamespace(launch=launch, free_port=free_port, is_root=is_root)


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory):
    """The project's JupyterLab on 127.0.0.1:<random port>, token-protected, root_dir labs/."""
    home = tmp_path_factory.mktemp("jupyterlab")
    settings, workspaces, runtime = home / "settings", home / "workspaces", home / "runtime"
    for plugin, values in LAB_SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    workspaces.mkdir()
    runtime.mkdir()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(workspaces), JUPYTER_RUNTIME_DIR=str(runtime),
               LABKIT_PROFILE=os.environ.get("LABKIT_PROFILE", "cpu"),
               # the capstone (lab 11) runs its smoke config into a fresh folder, as under nbval
               LABKIT_CAPSTONE_CONFIG=os.environ.get("LABKIT_CAPSTONE_CONFIG", "smoke"),
               LABKIT_CAPSTONE_RUN_DIR=str(home / "capstone-runs"))
    port, token = free_port(), secrets.token_hex(24)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser",
           "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={LABS_DIR}",
           # window.jupyterapp: the tests read the notebook model and kernel state from it.
           "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if is_root():
        cmd.append("--allow-root")  # CI runs as root; JupyterLab refuses to start otherwise
    server = launch(cmd, cwd=LABS_DIR, port=port, token=token, env=env, runtime_dir=runtime,
                    log_path=home / "jupyterlab.log")
    try:
        server.startup_s = server.wait_ready()
    except BaseException:
        server.stop()
        raise
    yield server
    survivors = server.stop()
    leftovers = server.leftovers()
    assert not survivors, ("JupyterLab left processes running after SIGTERM (killed now):\n"
                           + "\n".join(survivors))
    assert not leftovers, "processes of the test JupyterLab survive SIGKILL:\n" + "\n".join(leftovers)


def find_chromium() -> str | None:
    explicit = os.environ.get("LABKIT_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def browser():
    """Headless system Chromium through Playwright; skips when no Chromium is installed."""
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (apt-get install chromium, or set LABKIT_CHROMIUM); "
                    "Playwright's own browser download does not work offline")
    from playwright.sync_api import sync_playwright  # dev extra; imported only when needed

    with sync_playwright() as pw:
        # launch() gives Chromium a fresh temporary --user-data-dir and removes it at close.
        chromium = pw.chromium.launch(executable_path=executable, headless=True,
                                      args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def screenshots_dir() -> Path:
    """screenshots/ at the repository root (gitignored), or $LABKIT_SCREENSHOTS."""
    path = Path(os.environ.get("LABKIT_SCREENSHOTS", REPO / "screenshots")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser screenshots go to {path}")
    return path


@pytest.fixture(scope="session")
def browser_results() -> list[dict]:
    return RESULTS


SUMMARY_COLUMNS = [("lab", "lab"), ("status", "status"), ("cells", "cells run"),
                   ("figures", "figures"), ("widgets", "widgets"), ("moved", "explorers moved"),
                   ("console_errors", "console errors"), ("load_s", "load s"),
                   ("run_s", "run s"), ("seconds", "total s")]


# `make test-browser` runs two labs at a time (pytest-xdist): each worker leaves its rows in a
# file and the controller prints one table.
RESULTS_DIR = Path(os.environ.get("LABKIT_SCREENSHOTS", REPO / "screenshots")).resolve()
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def pytest_sessionstart(session):
    if not WORKER and RESULTS_DIR.exists():
        for old in RESULTS_DIR.glob(".browser-results-*.json"):
            old.unlink()


def pytest_sessionfinish(session):
    if WORKER and RESULTS:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f".browser-results-{WORKER}.json").write_text(json.dumps(RESULTS, default=str))


def pytest_terminal_summary(terminalreporter):
    results = list(RESULTS)
    if not WORKER and RESULTS_DIR.exists():
        for part in sorted(RESULTS_DIR.glob(".browser-results-*.json")):
            results += json.loads(part.read_text())
    if not results:
        return
    results.sort(key=lambda r: str(r.get("lab", "")))
    tr = terminalreporter
    tr.section("labs in JupyterLab (headless Chromium)")
    rows = [[str(r.get(key, "")) for key, _ in SUMMARY_COLUMNS] for r in results]
    heads = [head for _, head in SUMMARY_COLUMNS]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    tr.write_line("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    for row in rows:
        tr.write_line("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    for r in results:
        for note in r.get("notes", []):
            tr.write_line(f"{r['lab']}: {note}")
    for r in results:
        if r.get("screenshot"):
            tr.write_line(f"{r['lab']}: screenshot {r['screenshot']}")
