"""`labkit run-labs`: execute labs headless in fresh kernels and measure each one.

This is the project's benchmark of lab runtimes: wall seconds from kernel start to the last
cell, the peak memory of the kernel and every process it started (torchrun workers included;
memory they share counted once, as a container's limit counts it), and their CPU seconds, both
sampled every 100 ms. On a quiet machine a lab that runs
one thread takes about its CPU seconds of wall time; the two differ when other work competes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from .errors import LabkitError
from .samples import labs_dir

LAB_NAME = re.compile(r"^(\d\d)_[\w-]+\.ipynb$")


@dataclass
class LabResult:
    lab: str
    status: str  # "ok", "error" or "timeout"
    wall_s: float
    peak_mib: float
    detail: str = ""
    cpu_s: float = 0.0  # user + system seconds of the kernel and its processes (sampled)
    peak_rss_mib: float = 0.0  # the RSS sum: shared memory counted in every process (upper bound)

    def as_dict(self) -> dict:
        return asdict(self)


def find_labs(only: list[str] | None = None, directory: Path | None = None) -> list[Path]:
    """The lab notebooks, optionally those whose number or name matches `only`."""
    directory = Path(directory) if directory is not None else labs_dir()
    if not directory.is_dir():
        raise LabkitError(f"labs directory {str(directory)!r} does not exist")
    labs = sorted(p for p in directory.glob("*.ipynb") if LAB_NAME.match(p.name))
    if isinstance(only, str) or (only is not None and not all(isinstance(k, str) for k in only)):
        raise LabkitError(f"only must be a list of lab numbers or names, got {only!r}")
    if not only:
        return labs
    chosen = []
    for key in only:
        key = key.strip()
        if not key:  # '--only ""' must not quietly mean every lab
            valid = ", ".join(p.name[:2] for p in labs)
            raise LabkitError(f"only names an empty lab; give lab numbers or names: {valid}")
        hits = [p for p in labs if p.name[:2] == key.zfill(2) or p.stem == key or p.name == key]
        if not hits:
            valid = ", ".join(p.name[:2] for p in labs)
            raise LabkitError(f"no lab matches {key!r}; labs are: {valid} (files in {directory})")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


# A child younger than this that still has its parent's command line has not exec'd yet: between
# fork (or vfork, which subprocess uses) and exec it reads as a copy of its parent's memory.
_PRE_EXEC_S = 0.5


def _not_yet_its_own(child: psutil.Process, now: float) -> bool:
    """True for a child caught between fork and exec: it owns no memory of its own yet (after a
    vfork it *is* its parent's memory), so counting it would count the parent twice."""
    if now - child.create_time() >= _PRE_EXEC_S:
        return False
    try:
        parent = child.parent()
        return parent is not None and child.cmdline() == parent.cmdline()
    except psutil.AccessDenied:  # another user's process (hidepid): count it whole
        return False


def _memory(child: psutil.Process) -> tuple[int, int]:
    """(PSS, RSS) of one process. PSS splits a page shared by n processes into n parts, so the
    sum over processes counts libtorch once however many torchrun workers map it, as a
    container's memory limit (Binder's) does; the RSS sum counts it in every process. Where PSS
    is not readable (not Linux, or another user's process) both are the RSS."""
    try:
        full = child.memory_full_info()  # carries the RSS too: one read of /proc, not two
    except psutil.AccessDenied:
        rss = child.memory_info().rss
        return rss, rss
    return getattr(full, "pss", full.rss), full.rss


class _PeakMemory:
    """Samples the memory of all descendants of this process in a background thread, and the
    CPU seconds each has used (a process that lives under 100 ms may go uncounted).

    `peak` is the largest sum of their PSS (memory shared between them counted once, a child
    between fork and exec not at all), the lab's budget figure; `peak_rss` the largest sum of
    their RSS, every process counted whole (run-labs' measure before 2026-12-07: an upper bound
    that counts libtorch once per torchrun worker, and a kernel twice while it starts a
    subprocess)."""

    def __init__(self, interval: float = 0.1, root: psutil.Process | None = None):
        self.interval, self._stop = interval, threading.Event()
        self.peak = self.peak_rss = 0
        self._cpu: dict[tuple[int, float], float] = {}  # (pid, start time) -> user+system s
        self._me = root or psutil.Process()  # whose descendants are measured
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        """One reading: (PSS sum, RSS sum) in bytes; also records CPU seconds."""
        pss_total = rss_total = 0
        now = time.time()
        for child in self._me.children(recursive=True):
            try:
                t = child.cpu_times()
                self._cpu[(child.pid, child.create_time())] = t.user + t.system
                if _not_yet_its_own(child, now):
                    pss, rss = 0, child.memory_info().rss
                else:
                    pss, rss = _memory(child)
            except psutil.Error:
                continue
            pss_total, rss_total = pss_total + pss, rss_total + rss
        return pss_total, rss_total

    def _run(self):
        while not self._stop.is_set():
            pss, rss = self.sample()
            self.peak, self.peak_rss = max(self.peak, pss), max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())


class RunInterrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM during run-labs: the run stops, its processes are killed.
    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int, lab: str, killed: int):
        self.signum, self.lab, self.killed = signum, lab, killed
        super().__init__(f"{signal.Signals(signum).name} during {lab}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def kill_descendants(grace: float = 3.0) -> int:
    """Terminate every process this one started (kernels, torchrun and its workers, in any
    session), then kill what is left after `grace` seconds; returns how many there were."""
    try:
        tree = psutil.Process().children(recursive=True)  # the whole tree, before any dies
    except psutil.Error:
        return 0
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return len(tree)


@contextlib.contextmanager
def _stop_on_signals(current: list[str]):
    """While the labs run, SIGINT and SIGTERM kill every child process and raise
    RunInterrupted. Without this, the kernel (in its own session) runs on, nbclient reports the
    interrupted cell as an error, and the next lab starts."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def stop(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        raise RunInterrupted(signum, current[0], kill_descendants())

    before = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def pinned_outputs(cell) -> list:
    """The outputs a committed notebook keeps: the text of cells nbval checks, nothing else."""
    if cell.cell_type != "code" or CHECK_MARK not in cell.source:
        return []
    kept = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream" and out.name == "stdout":
            kept.append(out)
        elif out.output_type == "execute_result" and "text/plain" in out.data:
            rich = sorted(set(out.data) - {"text/plain"})
            if rich:  # nbval compares every field a fresh run returns: HTML tables included
                raise LabkitError(f"a checked cell returns {', '.join(rich)} besides text, which nbval "
                                  f"would compare too; print() the value instead (cell: "
                                  f"{cell.source.splitlines()[-1][:60]!r})")
            out.data = {"text/plain": out.data["text/plain"]}
            out.metadata = {}
            out.execution_count = None
            kept.append(out)
    return kept


def pin_outputs(nb, ran=None) -> None:
    """Strip a notebook to its committed state: only checked cells keep their text outputs
    (from `ran`, an executed copy, when given). nbval treats a cell without an execution count
    as unrun, so a pinned cell carries its position among the code cells as its count."""
    ran_cells = ran.cells if ran is not None else nb.cells
    number = 0
    for cell, done in zip(nb.cells, ran_cells):
        if cell.cell_type != "code":
            continue
        number += 1
        cell.outputs = pinned_outputs(done)
        cell.execution_count = number if cell.outputs else None
        cell.metadata.pop("execution", None)


def _in_thread(fn):
    """fn() in a worker thread, its result or exception handed back. nbclient, run in the main
    thread, replaces the SIGINT/SIGTERM handlers with its own (which only shut its kernel down,
    so the run went on with the next lab); off the main thread it cannot, and ours stay."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller, whatever it is
            box["error"] = exc

    worker = threading.Thread(target=run, name="labkit-run-lab", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)  # short waits: the main thread stays free to take a signal
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _cell_timeout(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LabkitError(f"cell_timeout={value!r}: valid is a whole number of seconds >= 1")
    return value


def run_lab(path: Path, *, cell_timeout: int = 600, output_dir: Path | None = None,
            pin: bool = False) -> LabResult:
    import nbformat

    _cell_timeout(cell_timeout)
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=cell_timeout, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    status, detail = "ok", ""
    start = time.perf_counter()
    with _PeakMemory() as mem:
        try:
            _in_thread(client.execute)
        except CellTimeoutError as exc:
            status, detail = "timeout", str(exc).splitlines()[0]
        except CellExecutionError as exc:
            status = "error"
            detail = f"{exc.ename}: {exc.evalue}"[:300]
        except Exception as exc:  # kernel died, etc.
            status, detail = "error", f"{type(exc).__name__}: {exc}"[:300]
    wall = time.perf_counter() - start
    if pin and status == "ok":
        pinned = nbformat.read(path, as_version=4)
        pin_outputs(pinned, ran=nb)
        nbformat.write(pinned, path)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, output_dir / path.name)
    return LabResult(path.stem, status, round(wall, 1), round(mem.peak / 2**20, 0), detail,
                     round(mem.cpu_s, 1), round(mem.peak_rss / 2**20, 0))


def run_labs(only=None, profile: str | None = None, cell_timeout: int = 600,
             output_dir: Path | None = None, echo=print, pin: bool = False,
             directory: Path | None = None) -> list[LabResult]:
    """Run the labs (all, or those `only` names) from `directory` (default: the repository's
    labs/). SIGINT or SIGTERM stops the whole run: every process it started is killed and
    RunInterrupted is raised."""
    _cell_timeout(cell_timeout)
    labs = find_labs(only, directory)
    if profile:
        from .profiles import PROFILES

        if profile not in PROFILES:
            raise LabkitError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
        os.environ["LABKIT_PROFILE"] = profile
    results, current = [], ["(starting)"]
    with _stop_on_signals(current):
        for path in labs:
            current[0] = path.name
            echo(f"running {path.name} ...", flush=True)
            result = run_lab(path, cell_timeout=cell_timeout, output_dir=output_dir, pin=pin)
            echo(f"  {result.status} in {result.wall_s:.1f} s ({result.cpu_s:.1f} CPU s), "
                 f"peak {result.peak_mib:.0f} MiB {result.detail}", flush=True)
            results.append(result)
    return results


def machine_label() -> str:
    """The machine a measurement belongs to: CPU model, torch's CPU kernels, cores (or the GPU).

    The same lab costs 1.3-1.8x more CPU on an AVX2-only CPU than on one with AVX-512, so a
    runtime without its machine says little."""
    import platform

    import torch

    from .env import detect

    caps = detect()
    if caps.device == "cuda":
        return f"{caps.gpu_name}, {caps.cpu_cores} CPU cores"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, torch CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
            f"{caps.cpu_cores} cores")


def results_record(results: list[LabResult], profile_name: str) -> dict:
    """What `run-labs --json` writes: the machine, the profile and one row per lab."""
    return {"machine": machine_label(), "profile": profile_name,
            "measured": time.strftime("%Y-%m-%d"), "labs": [r.as_dict() for r in results]}


README_BEGIN = "<!-- run-labs table: begin -->"
README_END = "<!-- run-labs table: end -->"


def readme_table(record: dict, titles: dict[str, tuple[str, str]]) -> str:
    """The README's lab table from a run-labs record: {stem: (concept, what you will see)}."""
    rows = ["| lab | concept | file | what you will see | CPU s | wall s | peak memory |",
            "|---|---|---|---|---|---|---|"]
    for r in record["labs"]:
        concept, sees = titles.get(r["lab"], ("", ""))
        rows.append(f"| {r['lab'][:2]} | {concept} | [labs/{r['lab']}.ipynb](labs/{r['lab']}.ipynb) "
                    f"| {sees} | {r['cpu_s']:.0f} | {r['wall_s']:.0f} | {r['peak_mib'] / 1024:.1f} GiB |")
    total_cpu = sum(r["cpu_s"] for r in record["labs"])
    rows.append("")
    rows.append(f"Measured by `labkit run-labs --json benchmarks/lab_runtimes.json` on "
                f"{record['measured']}, profile {record['profile']}, on {record['machine']}: "
                f"{total_cpu / 60:.1f} CPU minutes for all {len(record['labs'])} labs. CPU s is "
                "the user + system time of the kernel and every process it starts (torchrun "
                "workers included), the fair figure on a shared machine; wall s is what you "
                "wait on a quiet one; peak memory is the largest sum of those processes' PSS "
                "(memory they share, such as libtorch in each torchrun worker, counted once, as "
                "a container's memory limit counts it). Regenerate this table with "
                "`labkit run-labs --readme`.")
    return "\n".join(rows)


def update_readme(readme: Path, record: dict) -> None:
    """Replace the table between the README's markers with one built from `record`, keeping
    each lab's concept and description from the rows already there."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise LabkitError(f"{readme} has no run-labs table markers ({README_BEGIN} ... {README_END})")
    head, rest = text.split(README_BEGIN, 1)
    old, tail = rest.split(README_END, 1)
    titles = {}
    for line in old.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].isdigit():
            stem = re.search(r"labs/([\w-]+)\.ipynb", cells[2])
            if stem:
                titles[stem.group(1)] = (cells[1], cells[3])
    table = readme_table(record, titles)
    readme.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}")


def format_results(results: list[LabResult], profile_name: str) -> str:
    head = (f"{'lab':<28} {'status':<8} {'wall s':>7} {'CPU s':>7} {'peak MiB':>9} "
            f"{'RSS sum':>8}  detail")
    lines = [f"labkit run-labs (profile {profile_name}, {machine_label()})", head, "-" * len(head)]
    for r in results:
        lines.append(f"{r.lab:<28} {r.status:<8} {r.wall_s:>7.1f} {r.cpu_s:>7.1f} {r.peak_mib:>9.0f} "
                     f"{r.peak_rss_mib:>8.0f}  {r.detail}")
    lines.append("peak MiB: the processes' summed PSS (memory they share counted once, as a "
                 "container limit counts it); RSS sum: shared memory counted in each process")
    return "\n".join(lines)
