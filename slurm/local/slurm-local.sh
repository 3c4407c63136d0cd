#!/bin/bash
# A private single-node SLURM on this machine (for trying the templates, and what the tests use).
#
#   slurm/local/slurm-local.sh install          apt-get the packages (root; no system services are started)
#   slurm/local/slurm-local.sh start [ROOT]     start munged + slurmctld + slurmd under ROOT (default /tmp/medtf-slurm)
#   CPU_NODES=1 slurm/local/slurm-local.sh start [ROOT]
#                                               ... plus 1 CPU-only node (partition cpu): heterogeneous jobs
#                                               (`medtf slurm CONFIG --data-workers N`) need a second node, since
#                                               SLURM's backfill never starts two components on one node
#   slurm/local/slurm-local.sh status [ROOT]
#   slurm/local/slurm-local.sh stop [ROOT]      stop them (by their pid files under ROOT only)
#
# After `start`: export SLURM_CONF=ROOT/etc/slurm.conf, then sbatch / squeue / medtf slurm ... --submit as usual.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
[[ -x $python ]] || python=python3
action=${1:?usage: slurm-local.sh install|start|stop|status [ROOT]}
cd "$here"
exec "$python" -m medtf.hpc.local_cluster "$action" --root "${2:-/tmp/medtf-slurm}" --cpu-nodes "${CPU_NODES:-0}"
