#!/usr/bin/env bash
# Train lladax on one machine with N GPUs.
#
#   launch/gpu.sh --config configs/llada_1b.py --workdir runs/llada_1b [--gpus N] [-- overrides]
#
# Default: ONE process that sees the N GPUs (JAX drives all local devices from one process).
# --process-per-gpu: N processes, one GPU each, joined by jax.distributed through
# LLADAX_COORDINATOR_ADDRESS / LLADAX_NUM_PROCESSES / LLADAX_PROCESS_ID (what a multi-node job
# does, on one node). Either way the job resumes from the newest checkpoint in --workdir, so a
# rerun (or --max-restarts) continues after a crash or a preempted VM.
set -euo pipefail

PROG=gpu.sh
die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { echo "$PROG: $*" >&2; }

usage() {
  cat <<'EOF'
usage: launch/gpu.sh --config FILE --workdir DIR [options] [-- lladax train overrides]

  --config FILE[:ARG]   config file, e.g. configs/llada_1b.py
  --workdir DIR         checkpoints and metrics (local, NFS or gs://); reruns resume from it
  --gpus N              GPUs to use: 0..N-1 (default: all that nvidia-smi lists, or the
                        entries of CUDA_VISIBLE_DEVICES)
  --process-per-gpu     one process per GPU with jax.distributed (default: one process)
  --port PORT           coordinator port for --process-per-gpu (default 8476)
  --log-dir DIR         per-process logs for --process-per-gpu (default WORKDIR/logs, or
                        ./gpu-logs for a gs:// workdir)
  --max-restarts N      rerun the job after a failure up to N times (default 0)
  --dry-run             print the commands (with their environment) instead of running them
  -h, --help            this text

Environment: LLADAX_BIN (the lladax command, default `lladax`; e.g. "uv run --frozen lladax"),
XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.90 here).
EOF
}

CONFIG="" WORKDIR="" GPUS="" PER_GPU=0 PORT=8476 LOG_DIR="" MAX_RESTARTS=0 DRY_RUN=0 EXTRA=()
while (($#)); do
  opt=$1
  if [[ $opt == --*=* ]]; then set -- "${opt%%=*}" "${opt#*=}" "${@:2}"; opt=$1; fi
  case $opt in
    --config | --workdir | --gpus | --port | --log-dir | --max-restarts)
      (($# >= 2)) || die "$opt needs a value (see $PROG --help)"
      case $opt in
        --config) CONFIG=$2 ;;
        --workdir) WORKDIR=$2 ;;
        --gpus) GPUS=$2 ;;
        --port) PORT=$2 ;;
        --log-dir) LOG_DIR=$2 ;;
        --max-restarts) MAX_RESTARTS=$2 ;;
      esac
      shift 2 ;;
    --process-per-gpu) PER_GPU=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $opt (see $PROG --help; lladax overrides go after --)" ;;
  esac
done

[[ -n $CONFIG ]] || die "no config: pass --config configs/<name>.py"
[[ -n $WORKDIR ]] || die "no workdir: pass --workdir runs/<name> (or gs://BUCKET/path)"
[[ $PORT =~ ^[0-9]+$ ]] || die "--port '$PORT' must be a number"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || die "--max-restarts '$MAX_RESTARTS' must be a number"
if [[ -z $GPUS ]]; then
  if [[ -n ${CUDA_VISIBLE_DEVICES:-} ]]; then
    IFS=, read -r -a visible <<<"$CUDA_VISIBLE_DEVICES"
    GPUS=${#visible[@]}
  elif command -v nvidia-smi >/dev/null 2>&1; then
    GPUS=$(nvidia-smi -L | grep -c '^GPU ' || true)
  fi
  [[ -n $GPUS && $GPUS != 0 ]] || die "no GPU found (nvidia-smi lists none): pass --gpus N, \
or install the CUDA jax with 'uv sync --extra gpu'"
fi
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus '$GPUS' must be a positive integer"
read -r -a LLADAX <<<"${LLADAX_BIN:-lladax}"
((DRY_RUN)) || command -v "${LLADAX[0]}" >/dev/null 2>&1 || die "${LLADAX[0]} not found: \
'uv sync --extra gpu' and activate .venv, or set LLADAX_BIN=\"uv run --frozen lladax\""
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}"

TRAIN=("${LLADAX[@]}" train --config "$CONFIG" --workdir "$WORKDIR")
seq_csv() { local i out=""; for ((i = 0; i < $1; i++)); do out+="${out:+,}$i"; done; echo "$out"; }

show() { local w line=""; for w in "$@"; do line+="${line:+ }$(printf '%q' "$w")"; done; echo "$line"; }

CHILDREN=() STOPPING=0
forward() {  # SIGTERM: pass it on so every process checkpoints before exiting
  STOPPING=1
  note "SIGTERM: asking the job to checkpoint and exit"
  ((${#CHILDREN[@]} == 0)) || kill -TERM "${CHILDREN[@]}" 2>/dev/null || true
}
trap forward TERM
# Ctrl-C already reaches every process of the terminal's group (a second signal would make
# lladax stop without its checkpoint): only remember not to restart.
trap 'STOPPING=1' INT

wait_all() {  # wait for every child (surviving the trap); status 0 only if all succeeded
  local pid status=0 s
  for pid in "${CHILDREN[@]}"; do
    # A trapped signal cuts `wait` short: repeat while the child lives; bash keeps its status.
    while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
    s=0; wait "$pid" || s=$?
    ((s == 0)) || { status=$s; kill -TERM "${CHILDREN[@]}" 2>/dev/null || true; }
  done
  CHILDREN=()
  return "$status"
}

run_once() {
  local i cmd
  if ((!PER_GPU)); then
    cmd=(env CUDA_VISIBLE_DEVICES="$(seq_csv "$GPUS")" "${TRAIN[@]}" --distributed off "${EXTRA[@]}")
    if ((DRY_RUN)); then show "${cmd[@]}"; return 0; fi
    "${cmd[@]}" &
    CHILDREN=($!)
    wait_all
    return
  fi
  local logs=${LOG_DIR:-$WORKDIR/logs}
  [[ -n $LOG_DIR || $WORKDIR != gs://* ]] || logs=gpu-logs
  ((DRY_RUN)) || mkdir -p "$logs"
  for ((i = 0; i < GPUS; i++)); do
    cmd=(env CUDA_VISIBLE_DEVICES="$i" LLADAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT"
      LLADAX_NUM_PROCESSES="$GPUS" LLADAX_PROCESS_ID="$i"
      "${TRAIN[@]}" --distributed auto "${EXTRA[@]}")
    if ((DRY_RUN)); then show "${cmd[@]}"; continue; fi
    if ((i == 0)); then  # process 0 also on the terminal
      "${cmd[@]}" > >(tee -a "$logs/train-$i.log") 2>&1 &
    else
      "${cmd[@]}" >>"$logs/train-$i.log" 2>&1 &
    fi
    CHILDREN+=($!)
  done
  ((DRY_RUN)) || { note "$GPUS processes; logs in $logs/train-*.log"; wait_all; }
}

attempt=0
while :; do
  status=0
  run_once || status=$?
  ((status != 0 && !STOPPING)) || exit "$status"
  ((attempt < MAX_RESTARTS)) || die "training exited with status $status"
  attempt=$((attempt + 1))
  note "training exited with status $status; restart $attempt/$MAX_RESTARTS resumes from the \
newest checkpoint"
done
