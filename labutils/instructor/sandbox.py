"""The sandbox every student's code runs in: bubblewrap, plus a cgroup for memory and processes.

A sandboxed process (a notebook's kernel, or the scoring process) is started as::

    sh -c 'echo $$ > MEMORY_CGROUP/cgroup.procs; echo $$ > PIDS_CGROUP/cgroup.procs; exec "$@"' \\
        bwrap --unshare-all --die-with-parent --new-session --cap-drop ALL --clearenv ... -- COMMAND

What it sees (:func:`bwrap_argv`) is an allowlist: the system folders (``/usr``, ``/etc``, ``/lib``...),
the Python environment and the folders given as readable, all read-only; a private ``/tmp`` (a tmpfs
in its memory), a fresh ``/dev`` and ``/proc``; one folder bound read-write for the kernel's connection
file and sockets. Never the repository itself (``.git``, ``tests/``, the instructor's notebooks), the
submissions, nor the grades folder. No network (its own network namespace), its own PID namespace and
session: ``os.kill(os.getppid(), 9)``, ``os.kill(0, 9)`` or ``kill -TERM 0`` reach only the sandbox,
and nothing started in it outlives it (``--die-with-parent``; the PID namespace ends with its first
process).

Memory and process count (:class:`Cgroup`): bubblewrap sets no limits, and ``RLIMIT_AS`` does not work
with torch (importing it reserves gigabytes of address space it never uses). The sandbox goes into a
memory cgroup of its own (cgroup v1 ``memory.limit_in_bytes``, or v2 ``memory.max``), created below
the grader's own cgroup, which counts what the processes really use (tmpfs files included) and lets the
kernel's OOM killer end the sandbox, not the grader; and into a ``pids`` cgroup (a fork bomb stops at
``pids.max``). Where no cgroup can be created (not root, no delegation), the fallback is ``RLIMIT_DATA``
per process (it counts the private writable memory torch allocates, not its reservations), and the
process count is not limited: the grader says so once.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LabError

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
INSTALL_HINT = ("bubblewrap (bwrap) is not installed or cannot create namespaces here: install it "
                "(Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap), "
                "or grade with --no-sandbox on a machine where the students' code may do anything you can")
NO_SANDBOX_WARNING = ("warning: --no-sandbox: the students' code runs with your permissions, can read and write "
                      "your files (the instructor's notebooks, other submissions, the grades folder), use the "
                      "network and start processes that outlive grading; memory is not limited. Points still "
                      "come only from calling each solution in a separate process, so monkeypatching, fake output "
                      "and tensor subclasses earn nothing, but a solution that reads the answers from disk would")


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use."""

    memory: int = 4 * 2**30  # bytes, the sandbox's processes together (tmpfs files included)
    pids: int = 256  # processes and threads


def bwrap() -> str | None:
    """The path of the bubblewrap executable, or None."""
    return shutil.which("bwrap")


def bwrap_works() -> bool:
    """Whether bubblewrap is installed and can create its namespaces on this machine."""
    import subprocess

    path = bwrap()
    if path is None or not sys.platform.startswith("linux"):
        return False
    try:
        probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "--", "true"],
                               capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def bwrap_problem() -> str:
    """Why bubblewrap cannot make the grader's sandboxes here, in one line with its own message ('' when it can).

    The probe asks for what every sandbox needs: all the namespaces, a fresh ``/dev`` and ``/proc``."""
    import subprocess

    path = bwrap()
    if path is None or not sys.platform.startswith("linux"):
        return INSTALL_HINT
    try:
        probe = subprocess.run([path, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "--dev", "/dev",
                                "--proc", "/proc", "--", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return f"{path} does not run ({type(error).__name__}: {error}); {INSTALL_HINT}"
    if probe.returncode == 0:
        return ""
    said = failure_line(probe.stderr, probe.returncode)
    return f"bubblewrap cannot make the grader's sandbox here ({path}: {said}); {fix_for(said)}"


def fix_for(said: str) -> str:
    """How to fix what a failed sandbox said."""
    text = said.lower()
    if "proc" in text:
        return ("it cannot mount a fresh /proc, as in a container that shares the host's PID namespace: grade "
                "on the host, or in a container started with its own PID namespace and /proc unmasked "
                "(e.g. docker run --security-opt systempaths=unconfined), or with --no-sandbox where the "
                "students' code may do anything you can")
    if "namespace" in text or "operation not permitted" in text or "permission denied" in text:
        return ("unprivileged user namespaces are off here: enable them (sysctl kernel.unprivileged_userns_clone=1, "
                "or on Ubuntu 24.04 kernel.apparmor_restrict_unprivileged_userns=0), or make bwrap setuid, or "
                "grade with --no-sandbox where the students' code may do anything you can")
    return ("run the same command with --no-sandbox on a copy to tell the sandbox from the environment, and "
            "check that bubblewrap works: bwrap --ro-bind / / --unshare-all --proc /proc --dev /dev true")


def require_bwrap() -> None:
    """Raise the one-line :class:`LabError` that says how to install bubblewrap, unless it works here."""
    if not bwrap_works():
        raise LabError(INSTALL_HINT)


def python_executable() -> str:
    """The Python to run in a sandbox: ``sys.executable`` with its folders resolved, so that an environment
    reached through a symbolic link (``venv-link/bin/python``) is found at the resolved paths the sandbox
    binds; the file name itself stays (a virtual environment's ``bin/python`` is a link that must stay one)."""
    path = Path(sys.executable)
    return str(path.parent.resolve() / path.name)


def failure_line(stderr: bytes | str, status: int | None = None) -> str:
    """The last lines a failed sandbox printed (bwrap's own message), as one line."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else str(stderr)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    said = "; ".join(lines[-3:])[-600:]
    return said or (f"it exited with status {status} and printed nothing" if status is not None else "no message")


def explain(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run a sandbox's command line again with its output kept, and say why it fails ('' when it works)."""
    import subprocess

    try:
        done = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout,
                              env=env if env is not None else {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except (OSError, subprocess.SubprocessError) as error:
        return f"{type(error).__name__}: {error}"
    return "" if done.returncode == 0 else failure_line(done.stderr, done.returncode)


def _contains(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def python_dirs(hidden: list[Path]) -> list[Path]:
    """The folders the Python environment needs: its prefixes, and the ``sys.path`` entries that are neither
    inside nor around a hidden folder (e.g. not the repository's ``tests/`` that pytest puts on the path);
    a virtual environment inside the repository is kept, and so is a folder of installed packages there that
    another environment reaches through a ``.pth`` file."""
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    prefixes.add(Path(sys.executable).resolve().parent)
    found = list(prefixes) + [Path(p).resolve() for p in sys.path if p and Path(p).is_absolute() and Path(p).is_dir()]
    keep: list[Path] = []
    for path in found:
        if any(_contains(path, h) for h in hidden):
            continue  # e.g. PYTHONPATH=the repository: its labutils/ is bound on its own
        in_env = any(_contains(prefix, path) for prefix in prefixes if not any(_contains(prefix, h) for h in hidden))
        installed = path.name in ("site-packages", "dist-packages")
        if not in_env and not installed and any(_contains(h, path) for h in hidden):
            continue  # inside the repository, the submissions or the grades (not in the environment)
        if not any(_contains(k, path) for k in keep):
            keep = [k for k in keep if not _contains(path, k)] + [path]
    return keep


def bwrap_argv(command: list[str], *, readable: list[Path], writable: list[Path], env: dict[str, str],
               chdir: str = "/tmp/work", masked: list[Path] = (), shown: list[Path] = ()) -> list[str]:
    """The bubblewrap command line that runs ``command`` in the sandbox.

    ``readable`` folders are bound read-only and ``writable`` ones read-write, at their own paths;
    ``masked`` folders are replaced by empty ones, in which only the ``shown`` entries are bound back.
    """
    argv = [bwrap() or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--clearenv", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--dir", "/tmp/home",
            "--dir", chdir]
    for folder in SYSTEM_DIRS:
        if Path(folder).exists():
            argv += ["--ro-bind", folder, folder] if not Path(folder).is_symlink() else \
                ["--symlink", os.readlink(folder), folder]
    for folder in readable:
        if Path(folder).exists():
            argv += ["--ro-bind", str(folder), str(folder)]
    for folder in masked:
        argv += ["--tmpfs", str(folder)]
    for entry in shown:
        argv += ["--ro-bind", str(entry), str(entry)]
    for folder in writable:
        argv += ["--bind", str(folder), str(folder)]
    for key, value in sorted(env.items()):
        argv += ["--setenv", key, value]
    return argv + ["--chdir", chdir, "--", *command]


# ---------------------------------------------------------------- cgroups


def _own_cgroup(controller: str) -> tuple[Path, Path] | None:
    """(mount point, this process's cgroup folder) for a cgroup v1 controller, or for v2 ('' controller)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller and controller in controllers.split(",")) or (not controller and controllers == ""):
            for mount in mounts:
                parts = mount.split()
                if len(parts) < 4:
                    continue
                kind, options = parts[2], parts[3].split(",")
                if (controller and kind == "cgroup" and controller in options) or (not controller and kind == "cgroup2"):
                    root = Path(parts[1])
                    return root, root / path.lstrip("/")
    return None


class Cgroup:
    """A memory and a pids cgroup for one sandbox (v1 here; v2 when the grader's own cgroup is delegated)."""

    counter = 0

    def __init__(self, limits: Limits) -> None:
        Cgroup.counter += 1
        name = f"labutils-grade-{os.getpid()}-{Cgroup.counter}"
        self.folders: list[Path] = []
        self.procs: list[Path] = []
        memory, pids = _own_cgroup("memory"), _own_cgroup("pids")
        if memory and pids:
            self._make(memory[1] / name, {"memory.limit_in_bytes": limits.memory})
            self._swap(memory[1] / name, limits.memory)
            self._make(pids[1] / name, {"pids.max": limits.pids})
        else:
            unified = _own_cgroup("")
            if unified:
                self._make(unified[1] / name, {"memory.max": limits.memory, "memory.swap.max": 0,
                                               "pids.max": limits.pids})

    def _make(self, folder: Path, settings: dict[str, int]) -> None:
        folder.mkdir()
        self.folders.append(folder)
        for key, value in settings.items():
            (folder / key).write_text(str(value))
        self.procs.append(folder / "cgroup.procs")

    @staticmethod
    def _swap(folder: Path, memory: int) -> None:
        memsw = folder / "memory.memsw.limit_in_bytes"
        if memsw.exists():
            try:
                memsw.write_text(str(memory))
            except OSError:
                pass  # no swap accounting: there is no swap to escape to either

    def prefix(self) -> list[str]:
        """The command that moves itself into the cgroups, then runs the rest of the command line."""
        moves = "; ".join(f"echo $$ > '{p}'" for p in self.procs)
        return ["/bin/sh", "-c", f"{moves} && exec \"$@\"", "sandbox"]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs:
            try:
                found |= {int(x) for x in path.read_text().split()}
            except OSError:
                pass
        return sorted(found)

    def peak_memory(self) -> int:
        for folder in self.folders:
            for name in ("memory.max_usage_in_bytes", "memory.peak"):
                try:
                    return int((folder / name).read_text())
                except (OSError, ValueError):
                    continue
        return 0

    def oom_killed(self) -> bool:
        for folder in self.folders:
            for name, key in (("memory.oom_control", "oom_kill "), ("memory.events", "oom_kill ")):
                try:
                    for line in (folder / name).read_text().splitlines():
                        if line.startswith(key) and int(line.split()[1]) > 0:
                            return True
                except (OSError, ValueError):
                    continue
        return False

    def remove(self) -> None:
        """Kill whatever is still in the cgroups, then remove them."""
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            for pid in self.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.05)
        for folder in self.folders:
            while True:
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        self.folders = []


def make_cgroup(limits: Limits) -> Cgroup | None:
    """A cgroup for one sandbox, or None where none can be created here."""
    try:
        group = Cgroup(limits)
    except OSError:
        return None
    if not group.folders:
        return None
    return group


def cgroups_work(limits: Limits) -> bool:
    group = make_cgroup(limits)
    if group is None:
        return False
    group.remove()
    return True


def rlimit_prefix(limits: Limits) -> list[str]:
    """The fallback without cgroups: ``prlimit --data`` (private writable memory per process)."""
    tool = shutil.which("prlimit")
    return [tool, f"--data={limits.memory}", "--"] if tool else []
