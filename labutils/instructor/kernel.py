"""The kernel a submitted notebook runs in: a Jupyter kernel inside the sandbox (or, with --no-sandbox, not).

The kernelspec's ``argv`` starts with bubblewrap (:func:`labutils.instructor.sandbox.bwrap_argv`); the
kernel talks to the grader over Unix sockets (``transport="ipc"``) in a folder bound into the sandbox,
since the sandbox has no network; ``interrupt_mode`` is ``message``, so a cell that runs past the
timeout is interrupted from inside (ipykernel signals itself) although the grader cannot signal a
process in another PID namespace. The kernel sees the labutils package, the Python environment, the
sample images and the torch hub cache (weights), read-only; ``HOME``, ``MPLCONFIGDIR`` and
``IPYTHONDIR`` are in its private ``/tmp``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from .sandbox import Cgroup, Limits, bwrap_argv, explain, python_dirs, python_executable, rlimit_prefix
from .student import REPO_ROOT

PACKAGE = Path(__file__).resolve().parents[1]
KERNEL_NAME = "labutils-sandbox"


@dataclass
class KernelSetup:
    """How the students' kernels are started in this run."""

    sandboxed: bool
    limits: Limits
    hidden: list[Path]  # never visible: the repository, the submissions, the grades folder
    readable: list[Path] = field(default_factory=list)  # more read-only folders (e.g. a module the checks need)
    env: dict[str, str] = field(default_factory=dict)  # LABUTILS_WEIGHTS, OMP_NUM_THREADS...
    cgroups: bool = True


def _lab_folders() -> list[Path]:
    """What the notebooks read: the package, the sample images, the torch hub cache, matplotlib's font cache."""
    from ..data import data_dir

    folders = [PACKAGE, data_dir()]
    if os.environ.get("LABUTILS_DATA", "").strip():
        folders.append(Path(os.environ["LABUTILS_DATA"]).expanduser().resolve())
    try:
        import torch.hub

        folders.append(Path(torch.hub.get_dir()).resolve())
    except Exception:  # no hub folder: the kernels download nothing anyway
        pass
    try:
        import matplotlib

        folders.append(Path(matplotlib.get_cachedir()).resolve())
    except Exception:
        pass
    return [f for f in folders if f.exists()]


def kernel_env(setup: KernelSetup) -> dict[str, str]:
    """The kernel's whole environment inside the sandbox (nothing else of the grader's is passed on)."""
    try:
        import matplotlib

        mpl_cache = matplotlib.get_cachedir()
    except Exception:
        mpl_cache = ""
    env = {
        "PATH": os.pathsep.join([str(Path(python_executable()).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": "/tmp/home", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), *map(str, setup.readable)]),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline", "MPLCONFIGDIR": "/tmp/mpl",
        "IPYTHONDIR": "/tmp/ipython", "JUPYTER_PLATFORM_DIRS": "1", "LABUTILS_MPL_CACHE": mpl_cache,
    }  # fmt: skip
    for key in ("LABUTILS_WEIGHTS", "LABUTILS_DATA", "LABUTILS_MIRROR", "TORCH_HOME"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    env.setdefault("LABUTILS_WEIGHTS", "random")
    if "TORCH_HOME" not in env:
        try:
            import torch.hub

            env["TORCH_HOME"] = str(Path(torch.hub.get_dir()).parent)
        except Exception:
            pass
    env.update(setup.env)
    return env


def kernel_argv(setup: KernelSetup, rundir: Path, cgroup: Cgroup | None) -> list[str]:
    """The sandboxed kernel's command line (``{connection_file}`` is filled in by jupyter_client)."""
    start = ['/bin/sh', '-c', 'mkdir -p /tmp/mpl /tmp/ipython; '
             'cp "$LABUTILS_MPL_CACHE"/fontlist-*.json /tmp/mpl/ 2>/dev/null; exec "$@"', 'kernel',
             python_executable(), "-m", "ipykernel_launcher", "-f", "{connection_file}"]  # fmt: skip
    argv = bwrap_argv(start, readable=_readable(setup), writable=[rundir], env=kernel_env(setup))
    return (cgroup.prefix() if cgroup else rlimit_prefix(setup.limits)) + argv


def _readable(setup: KernelSetup) -> list[Path]:
    return python_dirs(setup.hidden) + _lab_folders() + [Path(p).resolve() for p in setup.readable]


def why_no_kernel(setup: KernelSetup, rundir: Path) -> str:
    """Why a sandboxed kernel does not start here: the same sandbox importing the kernel, its output kept
    (bubblewrap's own message); '' when that works."""
    probe = [python_executable(), "-c", "import ipykernel_launcher, labutils, matplotlib_inline"]
    return explain(rlimit_prefix(setup.limits) + bwrap_argv(probe, readable=_readable(setup), writable=[rundir],
                                                            env=kernel_env(setup)))


def kernel_manager(setup: KernelSetup, rundir: Path, cgroup: Cgroup | None, n: int) -> AsyncKernelManager | None:
    """A kernel manager for the sandboxed kernel (None without a sandbox: nbclient's usual python3 kernel)."""
    if not setup.sandboxed:
        return None
    specs = rundir / f"kernels-{n}"
    (specs / KERNEL_NAME).mkdir(parents=True, exist_ok=True)
    spec = {"argv": kernel_argv(setup, rundir, cgroup), "display_name": "Python 3 (sandboxed grading)",
            "language": "python", "interrupt_mode": "message", "metadata": {"debugger": False}}
    (specs / KERNEL_NAME / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return AsyncKernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]),
        transport="ipc", ip=str(rundir / f"k{n}"), connection_file=str(rundir / f"connection-{n}.json"),
        autorestart=False)
