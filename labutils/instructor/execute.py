"""Executing: a submitted notebook runs top to bottom in fresh kernels, for the report (never for the points).

Outputs are cleared first; a cell that runs past the timeout is interrupted, the notebook as a whole has
a time budget, and a kernel that dies or stays stuck is replaced so that the cells after it still run.
Output beyond ``OUTPUT_CAP`` characters per cell and figures beyond ``FIGURES_CAP`` characters per
notebook are cut.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from .collect import nbgrader
from .kernel import KernelSetup, kernel_manager, why_no_kernel
from .results import Run
from .sandbox import make_cgroup

OUTPUT_CAP = 100_000  # characters of text output kept per cell
FIGURES_CAP = 8_000_000  # characters of figures (base64) kept per notebook
KERNEL_STARTS = 4  # kernels per notebook at most: the first one and 3 replacements
TIMEOUT_ERROR = "GraderTimeout"


def runnable_copy(submitted: nbformat.NotebookNode) -> tuple[nbformat.NotebookNode, list[str]]:
    """The submission's cells without outputs; malformed cells left out."""
    metadata = submitted.get("metadata")
    nb = nbformat.v4.new_notebook(metadata=copy.deepcopy(dict(metadata)) if isinstance(metadata, dict) else {})
    nb.metadata.pop("widgets", None)
    notes = []
    cells = submitted.get("cells")
    for cell in cells if isinstance(cells, list) else []:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw") \
                or not isinstance(cell.get("source"), str):
            notes.append("a malformed cell was left out")
            continue
        new = nbformat.v4.new_code_cell(cell["source"]) if cell["cell_type"] == "code" else \
            nbformat.v4.new_markdown_cell(cell["source"]) if cell["cell_type"] == "markdown" else \
            nbformat.v4.new_raw_cell(cell["source"])
        meta = nbgrader(cell)
        if meta:
            new.metadata["nbgrader"] = {"grade_id": meta["grade_id"], "solution": bool(meta.get("solution"))}
        nb.cells.append(new)
    return nb, notes


class _GraderClient(NotebookClient):
    """nbclient, with caps on output and figures, and a record of the cells that ran past the timeout."""

    def __init__(self, nb: nbformat.NotebookNode, run: Run, sizes: dict, **kw: object) -> None:
        super().__init__(nb, **kw)
        self.run, self.sizes = run, sizes  # sizes: (cell, "text") and "figures" -> characters received
        self.on_cell_executed = self._executed

    def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def]
        content = msg.get("content", {})
        data = content.get("data", {}) if isinstance(content.get("data"), dict) else {}
        figure = any(str(mime).startswith("image/") for mime in data)
        size = len(str(content.get("text", ""))) + sum(len(str(v)) for v in data.values())
        key = "figures" if figure else (cell_index, "text")
        self.sizes[key] = self.sizes.get(key, 0) + size
        if self.sizes[key] > (FIGURES_CAP if figure else OUTPUT_CAP) and msg["msg_type"] != "error":
            return None
        return super().output(outs, msg, display_id, cell_index)

    def _executed(self, cell, cell_index, execute_reply):  # type: ignore[no-untyped-def]
        if self.sizes.get((cell_index, "text"), 0) > OUTPUT_CAP:
            note = f"cell {cell_index + 1} printed more than {OUTPUT_CAP} characters: the rest was cut"
            self.run.notes.append(note)
            cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text=f"\n[grader: {note}]\n"))
            self.sizes[(cell_index, "text")] = 0
        if self.sizes.get("figures", 0) > FIGURES_CAP and not self.sizes.get("figures noted"):
            self.sizes["figures noted"] = 1
            self.run.notes.append(f"the figures passed {FIGURES_CAP} characters in cell {cell_index + 1}: "
                                  "later figures were left out")
        content = (execute_reply or {}).get("content", {})
        if content.get("ename") == TIMEOUT_ERROR:
            self.run.timed_out.add(cell_index)
            cell.outputs.append(nbformat.v4.new_output(
                "error", ename=TIMEOUT_ERROR, evalue=content["evalue"], traceback=[content["evalue"]]))

    @asynccontextmanager
    async def async_setup_kernel(self, **kwargs: Any) -> AsyncIterator[None]:
        """nbclient's, without the process-wide ``atexit`` and SIGINT/SIGTERM handlers it installs (they printed
        "Exception ignored in atexit callback" after a kernel that did not start, and swallowed the grader's
        SIGTERM): the grader stops its kernels itself, whatever happens."""
        cleanup = kwargs.pop("cleanup_kc", self.owns_km)
        if self.km is None:
            self.km = self.create_kernel_manager()
        try:
            if not self.km.has_kernel:
                await self.async_start_new_kernel(**kwargs)
            if self.kc is None:
                await self.async_start_new_kernel_client()
            yield
        finally:
            if cleanup:
                await self._async_cleanup_kernel()

    async def responsive(self, seconds: float) -> bool:
        """Whether the kernel answers a trivial request within ``seconds`` (after an interrupt)."""
        saved, self.timeout = self.timeout, seconds
        try:
            msg_id = self.kc.execute("pass", store_history=False)
            return await self.async_wait_for_reply(msg_id) is not None
        finally:
            self.timeout = saved


@dataclass
class Settings:
    """One grading run's settings."""

    timeout: int
    budget: int
    kernel: KernelSetup
    plain_env: dict[str, str]  # the kernel's environment without a sandbox
    execute: bool = True  # False (--no-execute): score only; the report shows the submitted outputs


def _stop_if_cancelled() -> None:
    """Raise CancelledError if this task was asked to stop, even where a library swallowed the request."""
    task = asyncio.current_task()
    if task is not None and getattr(task, "cancelling", lambda: 0)():
        raise asyncio.CancelledError


async def execute(nb: nbformat.NotebookNode, run: Run, rundir: Path, settings: Settings) -> None:
    """Run every code cell of ``nb`` in place; a new kernel takes over after a crash or a stuck cell."""
    start, kernels, sizes = 0, 0, {}
    code = [n for n, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    deadline = time.monotonic() + settings.budget
    cgroup = make_cgroup(settings.kernel.limits) if settings.kernel.sandboxed and settings.kernel.cgroups else None
    clients: list = []  # every kernel's client: its kernel process is killed on the way out, started or not
    try:
        while start < len(nb.cells):
            _stop_if_cancelled()
            if kernels == KERNEL_STARTS or time.monotonic() >= deadline:
                why = f"{KERNEL_STARTS} kernels died or got stuck in this notebook" if kernels == KERNEL_STARTS \
                    else f"the notebook's time budget of {settings.budget} s was used up"
                for n in (n for n in code if n >= start):
                    run.not_run[n] = f"not run: {why}"
                run.notes.append(f"cells from {start + 1} on were not run: {why}")
                return
            kernels += 1
            km = kernel_manager(settings.kernel, rundir, cgroup, kernels)
            client = _GraderClient(
                nb, run, sizes, km=km, timeout=settings.timeout, kernel_name="python3", allow_errors=True,
                interrupt_on_timeout=True, record_timing=False, resources={"metadata": {"path": str(rundir)}},
                error_on_timeout={"ename": TIMEOUT_ERROR, "evalue": "stopped: the cell ran out of time",
                                  "traceback": []},
            )  # fmt: skip
            clients.append(client)
            index = start
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            try:
                env = settings.plain_env if km is None else {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
                async with client.async_setup_kernel(env=env, **quiet):  # sandboxed: bwrap gets no secrets
                    for index in range(start, len(nb.cells)):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        client.timeout = max(1, int(min(settings.timeout, left)))
                        client.error_on_timeout = {"ename": TIMEOUT_ERROR, "traceback": [], "evalue":
                                                   f"stopped: the cell ran longer than {client.timeout} s"}
                        await client.async_execute_cell(nb.cells[index], index, execution_count=index + 1)
                        if index in run.timed_out and not await client.responsive(min(settings.timeout, 10)):
                            run.notes.append(f"cell {index + 1} ran past the timeout and the kernel did not recover "
                                             "from the interrupt: a new kernel ran the cells after it")
                            break
                    else:
                        return
                    if time.monotonic() >= deadline:
                        start = index
                        continue
            except DeadKernelError:
                _stop_if_cancelled()  # nbclient turns a cancellation (SIGTERM, the outside limit) into this
                oom = cgroup is not None and cgroup.oom_killed()
                why = f"ran out of memory (limit {settings.kernel.limits.memory / 2**30:g} GiB)" if oom else "died"
                run.notes.append(f"the kernel {why} in cell {index + 1}; a new kernel ran the cells after it "
                                 "(without what the earlier cells defined)")
                nb.cells[index].outputs.append(nbformat.v4.new_output(
                    "error", ename="DeadKernelError", evalue=f"the kernel {why} while running this cell",
                    traceback=[]))
            except Exception as error:  # the kernel did not start, a broken connection...
                if index == start and not client.kc:
                    for n in (n for n in code if n >= start):
                        run.not_run[n] = f"not run: the kernel did not start ({type(error).__name__}: {error})"
                    run.notes.append(f"the kernel did not start: {type(error).__name__}: {error}")
                    if kernels == 1:  # before any of the submission's code ran: the grader's environment
                        why = await asyncio.get_running_loop().run_in_executor(
                            None, why_no_kernel, settings.kernel, rundir) if settings.kernel.sandboxed else ""
                        said = why or f"{type(error).__name__}: {error}"
                        run.infrastructure.append(f"the kernel did not start ({said})")
                    return
                run.notes.append(f"execution stopped in cell {index + 1}: {type(error).__name__}: {error}")
            start = index + 1
    finally:
        if cgroup is not None:
            await asyncio.get_running_loop().run_in_executor(None, cgroup.remove)
        launched = [getattr(getattr(getattr(c, "km", None), "provisioner", None), "process", None) for c in clients]
        for process in filter(None, launched):  # reaped, never left as zombies (a start cancelled midway too)
            try:
                process.kill()
                await asyncio.get_running_loop().run_in_executor(None, process.wait)
            except (OSError, AttributeError):
                pass
