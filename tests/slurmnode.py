"""A real Slurm cluster of one node, started and stopped by a test (recipe: shared/notes/slurm-single-node.md).

Everything is private to one folder: its own munge key and socket (``AuthInfo=socket=``), its own ports,
state, spool and logs; no cgroup plugin (``proctrack/linuxproc``, ``task/none``), so the grader's own
cgroups are left alone. The daemons run as root (Slurm's ``SlurmUser=root``) and munged as the munge
user; all three are stopped by their pids, and the folder removed, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def missing() -> str | None:
    """Why a Slurm cluster cannot be started here, or None."""
    if os.geteuid() != 0:
        return "starting Slurm's daemons needs root"
    absent = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user (apt-get install munge)"
    return None


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _pid(path: Path, seconds: float = 20) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.1)
    raise RuntimeError(f"{path} was not written: the daemon did not start")


@contextlib.contextmanager
def slurm_cluster(cpus: int | None = None) -> Iterator[dict[str, str]]:
    """Start munged, slurmctld and slurmd; yield the environment for sbatch & co.; stop them."""
    folder = Path(tempfile.mkdtemp(prefix="labutils-slurm-"))
    folder.chmod(0o755)
    munge, pids = folder / "munge", []
    for sub in ("spool", "state", "log", "munge"):
        (folder / sub).mkdir()
    user = pwd.getpwnam("munge")
    key = munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for path in (munge, key):
        os.chown(path, user.pw_uid, user.pw_gid)
    munge.chmod(0o711)  # munged: the socket's folder must be searchable by all, writable only by munge
    host = socket.gethostname().split(".")[0]
    cpus = cpus or os.cpu_count() or 1
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
    ctld_port, d_port = _free_ports(2)
    conf = folder / "slurm.conf"
    conf.write_text(f"""ClusterName=labtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/ctld.log
SlurmdLogFile={folder}/log/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
NodeName={host} CPUs={cpus} RealMemory={max(memory, 1024)} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}

    def start(argv: list[str], log: Path) -> None:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            tail = log.read_text(errors="replace")[-1500:] if log.is_file() else ""
            raise RuntimeError(f"{Path(argv[-1] if argv[0] != 'runuser' else argv[4]).name} did not start "
                               f"({done.returncode}): {done.stderr.strip()[-500:]} {tail}")

    try:
        start(["runuser", "-u", "munge", "--", _binary("munged"), f"--socket={munge}/munge.socket",
               f"--key-file={key}", f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
               f"--seed-file={munge}/munged.seed"], munge / "munged.log")
        pids.append(_pid(munge / "munged.pid"))
        for daemon, pidfile, log in (("slurmctld", "slurmctld.pid", "ctld.log"), ("slurmd", "slurmd.pid", "d.log")):
            start([_binary(daemon)], folder / "log" / log)
            pids.append(_pid(folder / pidfile))
        deadline = time.monotonic() + 60
        while True:  # the node is "unk" for a few seconds, then idle (ReturnToService=2)
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
            if state.strip() == "idle":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Slurm node is {state.strip()!r}, not idle, after 60 s: "
                                   + (folder / "log" / "d.log").read_text(errors="replace")[-2000:])
            time.sleep(0.5)
        yield env
    finally:
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
        deadline = time.monotonic() + 20
        for pid in pids:
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        shutil.rmtree(folder, ignore_errors=True)


def wait_for(job: str, env: dict[str, str], seconds: float) -> None:
    """Wait until the job (and its array tasks) left the queue; TimeoutError past ``seconds``."""
    deadline = time.monotonic() + seconds
    while subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError(f"Slurm job {job} still queued or running after {seconds} s")
        time.sleep(1)
