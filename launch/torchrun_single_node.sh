#!/usr/bin/env bash
# One node, N processes (one per GPU).
#   launch/torchrun_single_node.sh CONFIG [NPROC] [--set key=value ...]
#   NPROC defaults to $NPROC, else the number of visible GPUs, else 1.
#   MAX_RESTARTS=N: torchrun restarts the worker group up to N times after a crash; the run
#   resumes from its newest checkpoint (--resume auto). See docs/launch.md, "Elastic restarts".
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 CONFIG [NPROC] [--set key=value ...]" >&2
  exit 2
fi
config=$1; shift
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
  nproc=$1; shift
elif [[ -n ${NPROC:-} ]]; then
  nproc=$NPROC
elif command -v nvidia-smi >/dev/null 2>&1; then
  nproc=$(nvidia-smi --list-gpus | wc -l)
else
  nproc=1
fi
[[ $nproc -ge 1 ]] || nproc=1

# torch 2.4+ shares the agent's TCP store with the workers and reuses it after a restart, so the
# restarted workers read the dead ones' gloo addresses (connectFullMesh failed, or a hang): a
# fresh store per restart avoids it (docs/launch.md, "Elastic restarts").
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
# --standalone: a local c10d rendezvous on a free port, no MASTER_ADDR needed.
exec torchrun --standalone --nnodes 1 --nproc_per_node "$nproc" --max-restarts "${MAX_RESTARTS:-0}" \
  --no-python partial-fc train --config "$config" "$@"
