#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM pod slice (default: a v5p-32, 16 chips on 4 hosts).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh [--dry-run] VERB [options] [-- TRAIN_FLAGS...]

Verbs, one gcloud step each, in the order a run needs them:
  create    create the TPU VM slice
  install   copy this checkout (git archive of HEAD) to every worker and install it with jax[tpu] in place of
            jax[cpu] into a Python 3.11 virtual environment (~/agent_rl_venv, made by uv); with --weights REPO
            also download the model into models/ on every worker
  run       launch/train.py --config CONFIG on every worker at once (--worker=all); jax.distributed
            finds the other workers itself, so the command needs no multi-process flags
  copy      copy the run's workdir from worker 0 to the same path here
  delete    delete the slice

Options (defaults in brackets; each also reads the environment variable named):
  --name NAME            TPU VM name [TPU_NAME or agent-rl]
  --zone ZONE            zone [TPU_ZONE or us-east5-a, a v5p zone]
  --project PROJECT      Google Cloud project [TPU_PROJECT or gcloud's default]
  --accelerator TYPE     accelerator type [TPU_ACCELERATOR or v5p-32]
  --version VERSION      TPU software version [TPU_VERSION or v2-alpha-tpuv5]
  --spot                 create a Spot slice (preemptible; re-running `run` resumes from the last checkpoint)
  --config CONFIG        config file[:variant] for train.py [configs/qwen2_5_7b.py:v5p_32]
  --workdir DIR          the run's workdir on every worker [runs/<name>]; on a multi-host slice checkpoints
                         must reach one shared directory (a gcsfuse or NFS mount seen by every worker)
  --weights REPO         install: Hugging Face model to download, e.g. Qwen/Qwen2.5-7B-Instruct
  --remote_dir DIR       checkout directory on the workers, relative to the home directory [agent_rl]
  --dry-run              print the commands instead of running them
  -- TRAIN_FLAGS...      passed on to train.py (e.g. --config.grpo.steps=10)

Example:
  launch/tpu_pod.sh create --name qwen7b
  launch/tpu_pod.sh install --name qwen7b --weights Qwen/Qwen2.5-7B-Instruct
  launch/tpu_pod.sh run --name qwen7b --config configs/qwen2_5_7b.py:v5p_32
  launch/tpu_pod.sh copy --name qwen7b && launch/tpu_pod.sh delete --name qwen7b
EOF
}

DRY_RUN=0
VERB=""
NAME="${TPU_NAME:-agent-rl}"
ZONE="${TPU_ZONE:-us-east5-a}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR="${TPU_ACCELERATOR:-v5p-32}"
VERSION="${TPU_VERSION:-v2-alpha-tpuv5}"
SPOT=0
CONFIG="configs/qwen2_5_7b.py:v5p_32"
WORKDIR=""
WEIGHTS=""
REMOTE_DIR="agent_rl"
VENV='$HOME/agent_rl_venv'  # on the workers; their shell expands $HOME
UV_VERSION="0.13.8"
TRAIN_FLAGS=()

die() { echo "error: $*" >&2; exit 2; }

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --accelerator) need_value "$@"; ACCELERATOR="$2"; shift 2 ;;
    --version) need_value "$@"; VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --weights) need_value "$@"; WEIGHTS="$2"; shift 2 ;;
    --remote_dir) need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --) shift; TRAIN_FLAGS=("$@"); break ;;
    create|install|run|copy|delete)
      [[ -z "$VERB" ]] || die "one verb at a time (got $VERB and $1)"
      VERB="$1"; shift ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ -n "$VERB" ]] || { usage >&2; exit 2; }
WORKDIR="${WORKDIR:-runs/$NAME}"

# One argument as the shell reads it back: plain words as they are, anything else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then printf '%s' "$1"; else printf '%s' "${1@Q}"; fi
}

# Print (dry run) or run one command.
step() {
  local out="" arg
  for arg in "$@"; do out+="$(quote "$arg") "; done
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "${out% }"
  else
    echo "+ ${out% }" >&2
    "$@"
  fi
}

# Flags every gcloud tpu-vm command takes.
WHERE=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || WHERE+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)

# A command run on every worker of the slice.
on_workers() { step "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"; }

case "$VERB" in
  create)
    extra=()
    [[ "$SPOT" == 0 ]] || extra+=(--spot)
    step "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION" \
      "${extra[@]}"
    ;;
  install)
    archive="${TMPDIR:-/tmp}/agent_rl-$NAME.tar.gz"
    step git archive --format=tar.gz --output="$archive" HEAD
    step "${TPU[@]}" scp "$archive" "$NAME:agent_rl.tar.gz" "${WHERE[@]}" --worker=all
    # The TPU VM image's python3 is 3.10 and jax 0.10 needs >= 3.11: uv makes a 3.11 virtual environment.
    # requirements.txt pins jax[cpu]; the same version's TPU build (jax[tpu] brings libtpu) replaces it.
    on_workers "mkdir -p $REMOTE_DIR && tar -xzf agent_rl.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && \
python3 -m pip install --user uv==$UV_VERSION && python3 -m uv venv --allow-existing --python 3.11 $VENV && \
sed 's/^jax\\[cpu\\]==/jax[tpu]==/' requirements.txt > requirements-tpu.txt && \
python3 -m uv pip install --python $VENV/bin/python -r requirements-tpu.txt"
    if [[ -n "$WEIGHTS" ]]; then
      on_workers "cd $REMOTE_DIR && $VENV/bin/python -c \"from huggingface_hub import snapshot_download; \
snapshot_download('$WEIGHTS', local_dir='models/${WEIGHTS##*/}')\""
    fi
    ;;
  run)
    flags=""
    for arg in "${TRAIN_FLAGS[@]}"; do flags+=" $(quote "$arg")"; done
    on_workers "cd $REMOTE_DIR && $VENV/bin/python launch/train.py --config $(quote "$CONFIG") \
--config.workdir=$(quote "$WORKDIR")$flags"
    ;;
  copy)
    step mkdir -p "$(dirname "$WORKDIR")"
    step "${TPU[@]}" scp --recurse "$NAME:$REMOTE_DIR/$WORKDIR" "$(dirname "$WORKDIR")/" "${WHERE[@]}" --worker=0
    ;;
  delete)
    step "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
    ;;
esac
