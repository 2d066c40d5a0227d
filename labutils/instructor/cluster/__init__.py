"""Scripts that grade a class on a cluster, shipped with labutils (no checkout of the lab's repository needed).

    python -m labutils.instructor.cluster DIR      # copy them into DIR (made if needed) and list them

- ``submit-slurm.sh``: ``submit-slurm.sh [--wait] N OUT SUBMISSIONS... [GRADE OPTIONS]`` submits
  ``grade.sbatch`` as a job array of N shards (``grade --shard I/N --out OUT/shards/I``) and
  ``merge.sbatch`` as a job that depends on it (``grade --merge OUT/shards/* --out OUT``).
- ``grade-indexed-job.yaml`` and ``merge-job.yaml``: the same shards as a Kubernetes Indexed Job, then the merge.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
FILES = ("submit-slurm.sh", "grade.sbatch", "merge.sbatch", "grade-indexed-job.yaml", "merge-job.yaml")


def copy_to(folder: Path) -> list[Path]:
    """Copy the cluster scripts into ``folder`` (executable bits kept); return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(FOLDER / name, folder / name)) for name in FILES]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m labutils.instructor.cluster DIR (the folder to copy the cluster scripts into)")
    for path in copy_to(Path(sys.argv[1])):
        print(path)
