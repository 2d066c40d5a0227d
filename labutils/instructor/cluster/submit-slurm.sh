#!/bin/bash
# Grade a class on a Slurm cluster: an array of N shards, then the merge as a job that depends on it.
#
#   submit-slurm.sh [--wait] N OUT SUBMISSIONS... [GRADE OPTIONS]
#   submit-slurm.sh 8 /scratch/grades /scratch/submissions --no-execute --jobs 2
#
# Prints the two job ids. Options for the merge (e.g. --feedback) go in LABUTILS_MERGE_ARGS; options for
# sbatch itself (partition, account, time) in SBATCH_* variables or the #SBATCH lines of the two scripts.
# --wait: return when the merge job ends, with its exit status.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
wait=()
if [ "${1:-}" = "--wait" ]; then wait=(--wait); shift; fi
shards=${1:?usage: submit-slurm.sh [--wait] N OUT SUBMISSIONS... [GRADE OPTIONS]}
out=${2:?usage: submit-slurm.sh [--wait] N OUT SUBMISSIONS... [GRADE OPTIONS]}
shift 2
case $shards in ''|*[!0-9]*|0) echo "N (the number of shards) must be a whole number of 1 or more, got $shards" >&2; exit 2;; esac
mkdir -p "$out/shards" "$out/logs"
out=$(cd "$out" && pwd)
array=$(sbatch --parsable --array="0-$(( shards - 1 ))" --output="$out/logs/grade-%A_%a.log" \
        "$here/grade.sbatch" "$out" "$@")
array=${array%%;*}
echo "grading: job $array ($shards array tasks)"
# shellcheck disable=SC2086  # LABUTILS_MERGE_ARGS is a list of options
merge=$(sbatch --parsable "${wait[@]}" --dependency="afterok:$array" --kill-on-invalid-dep=yes \
        --output="$out/logs/merge-%j.log" "$here/merge.sbatch" "$out" ${LABUTILS_MERGE_ARGS:-})
echo "merging: job ${merge%%;*} (after $array)"
