#!/usr/bin/env bash
# Launch training on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/d2l.py:gemma2_2b --workdir=gs://bucket/run [--config.k=v ...]
#
# Copies nothing: the repo must already be on every worker at the same path (e.g. via `gcloud ... scp --worker=all`)
# with `pip install ".[tpu]"` done. JAX discovers the pod topology itself: the config's `distributed = "auto"`
# makes hyperlora_jax.train call jax.distributed.initialize() with no arguments. Process 0 writes logs and events;
# all processes write their checkpoint shards (use a shared/GCS workdir). Preemption sends SIGTERM: the trainer
# saves and exits 0, so rerunning this same command resumes.
set -euo pipefail
if [ $# -lt 3 ]; then sed -n 2,10p "$0"; exit 2; fi
TPU_NAME=$1; ZONE=$2; shift 2
REPO_DIR=${REPO_DIR:-$(basename "$(cd "$(dirname "$0")/.." && pwd)")}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd ~/$REPO_DIR && python3 -m hyperlora_jax.train --config.distributed=auto $ARGS"
