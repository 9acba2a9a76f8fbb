#!/usr/bin/env bash
# Several nodes, started by hand (or by any scheduler): run this once on every node.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/torchrun_multi_node.sh CONFIG [--set ...]
# Variables: NNODES (required), NODE_RANK (required), MASTER_ADDR (required; node 0's address),
#   MASTER_PORT (29500), NPROC_PER_NODE (visible GPUs), RDZV_ID (partial-fc), MAX_RESTARTS (0:
#   restarts of the worker group after a crash; each resumes from the newest checkpoint).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: NNODES=N NODE_RANK=R MASTER_ADDR=HOST $0 CONFIG [--set key=value ...]" >&2
  exit 2
fi
config=$1; shift
: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0..NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of node 0)}"
master_port=${MASTER_PORT:-29500}
if [[ -z ${NPROC_PER_NODE:-} ]]; then
  NPROC_PER_NODE=$(nvidia-smi --list-gpus 2>/dev/null | wc -l || true)
  [[ $NPROC_PER_NODE -ge 1 ]] || NPROC_PER_NODE=1
fi

# a fresh TCP store for every restart (docs/launch.md, "Elastic restarts"); the store is then
# hosted by global rank 0 on a free port of its node, which the other nodes must be able to reach
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" --max-restarts "${MAX_RESTARTS:-0}" \
  --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$master_port" --rdzv_id "${RDZV_ID:-partial-fc}" \
  --no-python partial-fc train --config "$config" "$@"
