#!/usr/bin/env bash
# Cloud TPU VMs, pods and multislice for lladax: create, install, train, watch, tear down.
#
#   launch/tpu_pod.sh [--env-file FILE] [options] COMMAND [options] [-- extra args]
#
# Every gcloud call goes through `gc` (or `query`), so --dry-run prints the exact commands,
# one per line, shell-quoted, and runs none of them. `tpu_pod.sh help` lists everything.
set -euo pipefail

PROG=tpu_pod.sh
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$SCRIPT_DIR/.." && pwd)"
GCLOUD="${GCLOUD:-gcloud}"
COORDINATOR_PORT=8476   # jax.distributed's default coordinator port
MEGASCALE_PORT=8080     # the TPU runtime's cross-slice (DCN) port
# Remote layout, relative to each worker's home directory.
R_SRC=lladax            # the wheel (or git checkout) and configs/
R_VENV=lladax-venv      # Python 3.12 virtualenv with lladax[tpu]
R_LOGS=lladax-logs      # train.log (appended), train.pid, train.exit

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh [--env-file FILE] [options] COMMAND [options] [-- extra args]

Commands
  create    create the TPU VM (or a queued resource: multislice, --queued); waits until ready
  setup     install lladax[tpu] on every worker (--wheel FILE, --git-url URL --git-ref REF,
            or, with neither, a wheel built from this checkout) and copy configs/
  run       start `lladax train --distributed auto` on every worker, detached; each worker gets
            LLADAX_PROCESS_ID / LLADAX_NUM_PROCESSES / LLADAX_COORDINATOR_ADDRESS (and
            MEGASCALE_* for multislice); args after `--` go to lladax train
  status    TPU / queued-resource state and the job's state on every worker
  logs      tail each worker's ~/lladax-logs/train.log (--worker N|all, --lines N, --follow)
  ssh       ssh to one worker (--slice S --worker N); args after `--` run as a command
  stop      SIGTERM the training on every worker (it checkpoints and exits; `run` resumes)
  delete    delete the TPU VM(s) / queued resource
  watch     restart-on-preemption loop: while the job is not finished, recreate a preempted or
            deleted TPU (delete, create, setup, run) and rerun a failed job; training resumes
            from the newest checkpoint in --workdir (use gs://), up to --max-restarts times
  help      this text

Options (defaults come from the env file, see launch/tpu.env.example; flags win)
  --env-file FILE      KEY=VALUE defaults (default: $LLADAX_TPU_ENV or launch/tpu.env if present)
  --name NAME          TPU name; multislice nodes are NAME-0 .. NAME-(S-1)      [TPU_NAME=lladax]
  --project ID         GCP project (default: gcloud's configured project)       [TPU_PROJECT]
  --zone ZONE          e.g. us-east5-a (v5p), us-west4-a (v5e)                   [TPU_ZONE]
  --type TYPE          accelerator type: v5p-32, v5litepod-16 (or v5e-16), v6e-8, v4-16
                                                                           [TPU_TYPE=v5p-8]
  --runtime VERSION    TPU software version (default: derived from --type)      [TPU_RUNTIME]
  --spot | --no-spot   spot (preemptible) capacity                              [TPU_SPOT=false]
  --slices N           multislice: N slices of --type over DCN (uses a queued resource) [TPU_SLICES=1]
  --queued | --no-queued  create through a queued resource (default: only when --slices > 1)
  --no-wait            create: return once the request is accepted
  --wheel FILE         setup: install this lladax wheel                          [LLADAX_WHEEL]
  --git-url URL --git-ref REF  setup: install from a git checkout instead [LLADAX_GIT_URL/_REF]
  --config FILE[:ARG]  run: config path inside the repo, e.g. configs/llada_8b.py [LLADAX_CONFIG]
  --workdir DIR        run: checkpoints + metrics; gs://BUCKET/... for pods/spot [LLADAX_WORKDIR]
  --slice S            ssh/logs: which slice (default 0)
  --worker N|all       ssh/logs: which worker (ssh default 0, logs default all)
  --lines N            logs: lines to show (default 50)
  --follow             logs: keep following
  --max-restarts N     watch: give up after N recoveries                    [TPU_MAX_RESTARTS=20]
  --poll SECONDS       watch / create: seconds between state checks          [TPU_POLL_SECONDS=60]
  --dry-run            print every gcloud command instead of running it
  -h, --help           this text

Environment: GCLOUD (the gcloud binary, default `gcloud`).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }
note() { echo "$PROG: $*" >&2; }

# --- defaults, env file, flags ---------------------------------------------------------------
TPU_NAME=lladax TPU_PROJECT="" TPU_ZONE="" TPU_TYPE=v5p-8 TPU_RUNTIME="" TPU_SPOT=false
TPU_SLICES=1 TPU_QUEUED=auto TPU_MAX_RESTARTS=20 TPU_POLL_SECONDS=60
LLADAX_CONFIG="" LLADAX_WORKDIR="" LLADAX_WHEEL="" LLADAX_GIT_URL="" LLADAX_GIT_REF=""
ENV_KEYS=(TPU_NAME TPU_PROJECT TPU_ZONE TPU_TYPE TPU_RUNTIME TPU_SPOT TPU_SLICES TPU_QUEUED
  TPU_MAX_RESTARTS TPU_POLL_SECONDS LLADAX_CONFIG LLADAX_WORKDIR LLADAX_WHEEL LLADAX_GIT_URL
  LLADAX_GIT_REF)

load_env_file() {  # KEY=VALUE lines (optionally quoted); unknown keys are errors. Never sourced.
  local file=$1 line key value n=0
  [[ -f $file ]] || die "env file $file does not exist: copy launch/tpu.env.example"
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    line="${line#"${line%%[![:space:]]*}"}"
    [[ -z $line || $line == \#* ]] && continue
    [[ $line =~ ^([A-Z_][A-Z0-9_]*)=(.*)$ ]] ||
      die "$file:$n: expected KEY=VALUE, got '$line'"
    key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    [[ " ${ENV_KEYS[*]} " == *" $key "* ]] ||
      die "$file:$n: unknown key $key (valid: ${ENV_KEYS[*]})"
    if [[ $value =~ ^\"(.*)\"[[:space:]]*(#.*)?$ || $value =~ ^\'(.*)\'[[:space:]]*(#.*)?$ ]]; then
      value=${BASH_REMATCH[1]}
    else
      value="${value%%#*}"
      value="${value%"${value##*[![:space:]]}"}"
    fi
    printf -v "$key" '%s' "$value"
  done <"$file"
}

COMMAND="" DRY_RUN=0 WAIT=1 SLICE=0 WORKER="" LINES=50 FOLLOW=0 EXTRA=()
args=("$@")
env_file="${LLADAX_TPU_ENV:-}"
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == -- ]] && break
  if [[ ${args[i]} == --env-file ]]; then
    ((i + 1 < ${#args[@]})) || die "--env-file needs a value"
    env_file=${args[i + 1]}
  elif [[ ${args[i]} == --env-file=* ]]; then
    env_file=${args[i]#--env-file=}
  fi
done
if [[ -n $env_file ]]; then
  load_env_file "$env_file"
elif [[ -f $SCRIPT_DIR/tpu.env ]]; then
  load_env_file "$SCRIPT_DIR/tpu.env"
fi

while (($#)); do
  opt=$1
  if [[ $opt == --*=* ]]; then  # --key=value -> --key value
    set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
    opt=$1
  fi
  case $opt in
    --name | --project | --zone | --type | --accelerator-type | --runtime | --version | \
      --slices | --wheel | --git-url | --git-ref | --config | --workdir | --slice | --worker | \
      --lines | --max-restarts | --poll | --env-file)
      (($# >= 2)) || die "$opt needs a value (see $PROG help)"
      value=$2
      shift 2
      case $opt in
        --name) TPU_NAME=$value ;;
        --project) TPU_PROJECT=$value ;;
        --zone) TPU_ZONE=$value ;;
        --type | --accelerator-type) TPU_TYPE=$value ;;
        --runtime | --version) TPU_RUNTIME=$value ;;
        --slices) TPU_SLICES=$value ;;
        --wheel) LLADAX_WHEEL=$value ;;
        --git-url) LLADAX_GIT_URL=$value ;;
        --git-ref) LLADAX_GIT_REF=$value ;;
        --config) LLADAX_CONFIG=$value ;;
        --workdir) LLADAX_WORKDIR=$value ;;
        --slice) SLICE=$value ;;
        --worker) WORKER=$value ;;
        --lines) LINES=$value ;;
        --max-restarts) TPU_MAX_RESTARTS=$value ;;
        --poll) TPU_POLL_SECONDS=$value ;;
        --env-file) ;;  # already loaded
      esac
      ;;
    --spot) TPU_SPOT=true; shift ;;
    --no-spot) TPU_SPOT=false; shift ;;
    --queued) TPU_QUEUED=true; shift ;;
    --no-queued) TPU_QUEUED=false; shift ;;
    --no-wait) WAIT=0; shift ;;
    --follow) FOLLOW=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    -*) die "unknown option $opt (see $PROG help)" ;;
    *)
      [[ -z $COMMAND ]] || die "unexpected argument '$opt' after command '$COMMAND' (pass extra \
lladax arguments after --)"
      COMMAND=$opt
      shift
      ;;
  esac
done

# --- validation --------------------------------------------------------------------------------
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_bool() { [[ $1 == true || $1 == false ]]; }

[[ -n $COMMAND ]] || { usage >&2; die "no command given (create, setup, run, status, logs, ssh, \
stop, delete, watch)"; }
case $COMMAND in
  create | setup | run | status | logs | ssh | stop | delete | watch) ;;
  help) usage; exit 0 ;;
  *) die "unknown command '$COMMAND' (create, setup, run, status, logs, ssh, stop, delete, watch)" ;;
esac
[[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name '$TPU_NAME' is not a valid TPU name: lowercase letters, digits and '-'"
[[ -n $TPU_ZONE ]] || die "no zone: pass --zone (e.g. us-east5-a) or set TPU_ZONE in the env file"
if ! is_uint "$TPU_SLICES" || ((TPU_SLICES < 1)); then
  die "--slices '$TPU_SLICES' must be an integer >= 1"
fi
is_bool "$TPU_SPOT" || die "TPU_SPOT='$TPU_SPOT' must be true or false"
[[ $TPU_QUEUED =~ ^(true|false|auto)$ ]] || die "TPU_QUEUED='$TPU_QUEUED' must be true, false or auto"
if ! is_uint "$SLICE" || ((SLICE >= TPU_SLICES)); then
  die "--slice '$SLICE' must be in 0..$((TPU_SLICES - 1))"
fi
is_uint "$LINES" || die "--lines '$LINES' must be an integer"
is_uint "$TPU_MAX_RESTARTS" || die "--max-restarts '$TPU_MAX_RESTARTS' must be an integer"
is_uint "$TPU_POLL_SECONDS" || die "--poll '$TPU_POLL_SECONDS' must be a number of seconds"
[[ -z $WORKER || $WORKER == all ]] || is_uint "$WORKER" || die "--worker '$WORKER' must be a number or 'all'"
if [[ $TPU_QUEUED == auto ]]; then
  if ((TPU_SLICES > 1)); then TPU_QUEUED=true; else TPU_QUEUED=false; fi
elif [[ $TPU_QUEUED == false ]] && ((TPU_SLICES > 1)); then
  die "multislice (--slices $TPU_SLICES) needs a queued resource: drop --no-queued"
fi

# hosts_per_slice TYPE: VM hosts (= JAX processes) in one slice of this accelerator type.
hosts_per_slice() {
  local gen=${1%-*} n=${1##*-}
  [[ $1 =~ ^(v4|v5p|v5litepod|v6e)-[0-9]+$ ]] ||
    die "unknown accelerator type '$1': use e.g. v5p-32, v5litepod-16, v6e-8 or v4-16"
  case $gen in
    v4 | v5p) echo $(((n + 7) / 8)) ;;                  # n TensorCores, 2 per chip, 4 chips/host
    v5litepod | v6e) if ((n <= 8)); then echo 1; else echo $((n / 4)); fi ;;  # n chips
  esac
}
default_runtime() {
  case ${1%-*} in
    v4) echo tpu-ubuntu2204-base ;;
    v5p) echo v2-alpha-tpuv5 ;;
    v5litepod) echo v2-alpha-tpuv5-lite ;;
    v6e) echo v2-alpha-tpuv6e ;;
  esac
}
# gcloud calls v5e slices v5litepod-N; accept the short name (as configs/llada_8b.py uses it).
[[ $TPU_TYPE != v5e-* ]] || TPU_TYPE=v5litepod-${TPU_TYPE#v5e-}
HOSTS=$(hosts_per_slice "$TPU_TYPE")
[[ -n $TPU_RUNTIME ]] || TPU_RUNTIME=$(default_runtime "$TPU_TYPE")

NODES=()
if ((TPU_SLICES > 1)); then
  for ((s = 0; s < TPU_SLICES; s++)); do NODES+=("$TPU_NAME-$s"); done
else
  NODES=("$TPU_NAME")
fi
LOC=(--zone="$TPU_ZONE")
[[ -z $TPU_PROJECT ]] || LOC+=(--project="$TPU_PROJECT")

if ((!DRY_RUN)) && ! command -v "$GCLOUD" >/dev/null 2>&1; then
  die "$GCLOUD not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) \
and run 'gcloud auth login', or pass --dry-run to only print the commands"
fi

# --- gcloud wrappers ---------------------------------------------------------------------------
exec 5>&1  # --dry-run prints commands here: the real stdout, even inside $(...)
shell_word() {  # $1 as one shell word: bare if safe, else single-quoted (--flag='value' form)
  local re='^[][A-Za-z0-9_./:=@%+,^-]+$' head="" body=$1
  [[ $1 =~ $re ]] && { printf '%s' "$1"; return; }
  if [[ $1 =~ ^(--[a-z-]+=)(.*)$ ]]; then head=${BASH_REMATCH[1]} body=${BASH_REMATCH[2]}; fi
  printf "%s'%s'" "$head" "${body//\'/\'\\\'\'}"
}
print_cmd() {  # one copy-pasteable line per command
  local word line=""
  for word in "$@"; do line+="${line:+ }$(shell_word "$word")"; done
  echo "$line" >&5
}
gc() {  # a gcloud command that changes something: printed under --dry-run, run otherwise
  if ((DRY_RUN)); then print_cmd gcloud "$@"; else "$GCLOUD" "$@" 5>&-; fi
}
query() {  # a read-only gcloud query whose stdout we use; --dry-run prints it, outputs $DRY_VALUE
  if ((DRY_RUN)); then print_cmd gcloud "$@"; printf '%s\n' "${DRY_VALUE:-}"; else "$GCLOUD" "$@" 5>&-; fi
}
tpu_ssh() {  # tpu_ssh NODE WORKER REMOTE_COMMAND
  gc compute tpus tpu-vm ssh "$1" "${LOC[@]}" --worker="$2" --command="$3"
}
in_background() {  # run "$@" with errexit intact (a tested subshell would disable it)
  ("$@") &
  wait $!
}

node_ips() {  # worker IPs of a node, one per line, in worker order
  local out i
  if ((DRY_RUN)); then
    print_cmd gcloud compute tpus tpu-vm describe "$1" "${LOC[@]}" \
      --format="value(networkEndpoints[].ipAddress)"
    for ((i = 0; i < HOSTS; i++)); do echo "IP_OF_${1//-/_}_WORKER_$i"; done
    return
  fi
  out=$("$GCLOUD" compute tpus tpu-vm describe "$1" "${LOC[@]}" 5>&- \
    --format="value(networkEndpoints[].ipAddress)") ||
    die "cannot describe TPU $1: is it created? (see '$PROG status')"
  tr ';' '\n' <<<"$out" | sed '/^$/d'
}

# --- commands ----------------------------------------------------------------------------------
cmd_create() {
  local spot=()
  [[ $TPU_SPOT == false ]] || spot=(--spot)
  if [[ $TPU_QUEUED == true ]]; then
    local nodes=(--node-id="$TPU_NAME")
    ((TPU_SLICES == 1)) || nodes=(--node-count="$TPU_SLICES" --node-prefix="$TPU_NAME")
    gc compute tpus queued-resources create "$TPU_NAME" "${LOC[@]}" \
      --accelerator-type="$TPU_TYPE" --runtime-version="$TPU_RUNTIME" "${nodes[@]}" "${spot[@]}"
    ((WAIT)) || return 0
    wait_active
  else
    gc compute tpus tpu-vm create "$TPU_NAME" "${LOC[@]}" \
      --accelerator-type="$TPU_TYPE" --version="$TPU_RUNTIME" "${spot[@]}"
  fi
}

wait_active() {  # poll a queued resource until ACTIVE; FAILED / SUSPENDED are errors
  local state
  while :; do
    state=$(DRY_VALUE=ACTIVE query compute tpus queued-resources describe "$TPU_NAME" "${LOC[@]}" \
      --format="value(state.state)") || state=UNKNOWN
    case $state in
      ACTIVE) note "queued resource $TPU_NAME is ACTIVE"; return 0 ;;
      FAILED | SUSPENDED) die "queued resource $TPU_NAME is $state: see '$PROG status'; \
'$PROG delete' then create again (or try another zone)" ;;
      *) note "queued resource $TPU_NAME: $state; next check in ${TPU_POLL_SECONDS}s"
         sleep "$TPU_POLL_SECONDS" ;;
    esac
  done
}

# Remote install steps (after `set -e`): uv, a Python 3.12 venv, then lladax[tpu] from SPEC.
install_steps() {
  echo "export PATH=\"\$HOME/.local/bin:\$PATH\"; \
command -v uv >/dev/null || python3 -m pip install --user --quiet uv; \
uv venv --quiet --allow-existing --python 3.12 \"\$HOME/$R_VENV\"; \
uv pip install --quiet --python \"\$HOME/$R_VENV/bin/python\" --reinstall-package lladax \"$1\"; \
\"\$HOME/$R_VENV/bin/lladax\" --help >/dev/null; echo \"lladax installed on \$(hostname)\""
}

cmd_setup() {
  local node
  [[ -z $LLADAX_WHEEL || -z $LLADAX_GIT_URL ]] || die "pass either --wheel or --git-url/--git-ref, \
not both"
  if [[ -n $LLADAX_GIT_URL ]]; then
    [[ -n $LLADAX_GIT_REF ]] || die "--git-url needs --git-ref (a branch, tag or commit)"
    local q_url q_ref
    printf -v q_url '%q' "$LLADAX_GIT_URL"
    printf -v q_ref '%q' "$LLADAX_GIT_REF"
    for node in "${NODES[@]}"; do
      tpu_ssh "$node" all "set -e; rm -rf $R_SRC; git clone --quiet $q_url $R_SRC; \
git -C $R_SRC checkout --quiet $q_ref; $(install_steps "lladax[tpu] @ file://\$HOME/$R_SRC")"
    done
    return
  fi
  [[ -z $LLADAX_GIT_REF ]] || die "--git-ref needs --git-url"
  local wheel=$LLADAX_WHEEL
  if [[ -z $wheel ]]; then  # build one from this checkout
    local version
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$REPO_DIR/pyproject.toml" | head -n 1)
    wheel="$REPO_DIR/dist/lladax-$version-py3-none-any.whl"
    if ((DRY_RUN)); then
      print_cmd uv build --wheel --out-dir "$REPO_DIR/dist" "$REPO_DIR"
    else
      command -v uv >/dev/null || die "uv not found: pip install uv, or pass --wheel FILE"
      uv build --quiet --wheel --out-dir "$REPO_DIR/dist" "$REPO_DIR"
    fi
  fi
  [[ $wheel == *.whl ]] || die "--wheel '$wheel' is not a .whl file"
  ((DRY_RUN)) || [[ -f $wheel ]] || die "wheel $wheel does not exist: build it with \
'uv build --wheel' or omit --wheel"
  for node in "${NODES[@]}"; do
    tpu_ssh "$node" all "mkdir -p $R_SRC"
    gc compute tpus tpu-vm scp --recurse "$wheel" "$REPO_DIR/configs" "$node:$R_SRC/" \
      "${LOC[@]}" --worker=all
    tpu_ssh "$node" all "set -e; $(install_steps \
      "lladax[tpu] @ file://\$HOME/$R_SRC/$(basename "$wheel")")"
  done
}

# Runs detached on a worker (setsid + nohup: survives the ssh session): records lladax's pid for
# `stop` and `status`, waits for it and writes its exit status. No single quotes inside.
# shellcheck disable=SC2016  # expanded by the remote shell
WRAPPER='"${@:3}" & echo "$!" > "$2"; wait "$!"; echo "$?" > "$1"'

run_command() {  # the remote command that starts process PID of NPROC: PID NPROC COORD SLICE
  local pid=$1 nproc=$2 coord=$3 slice=$4 env train
  env="LLADAX_COORDINATOR_ADDRESS=$coord:$COORDINATOR_PORT LLADAX_NUM_PROCESSES=$nproc \
LLADAX_PROCESS_ID=$pid"
  if ((TPU_SLICES > 1)); then
    env+=" MEGASCALE_COORDINATOR_ADDRESS=$coord:$MEGASCALE_PORT MEGASCALE_PORT=$MEGASCALE_PORT \
MEGASCALE_NUM_SLICES=$TPU_SLICES MEGASCALE_SLICE_ID=$slice"
  fi
  printf -v train ' %q' train --config "$LLADAX_CONFIG" --workdir "$LLADAX_WORKDIR" \
    --distributed auto "${EXTRA[@]}"
  echo "mkdir -p $R_LOGS && rm -f $R_LOGS/train.exit && cd $R_SRC && \
echo \"=== \$(date -u +%FT%TZ) process $pid of $nproc ===\" >> \"\$HOME/$R_LOGS/train.log\" && \
export $env && { setsid nohup bash -c '$WRAPPER' lladax-job \"\$HOME/$R_LOGS/train.exit\" \
\"\$HOME/$R_LOGS/train.pid\" \"\$HOME/$R_VENV/bin/lladax\"$train \
>> \"\$HOME/$R_LOGS/train.log\" 2>&1 < /dev/null & }"
}

cmd_run() {
  [[ -n $LLADAX_CONFIG ]] || die "no config: pass --config configs/<name>.py or set LLADAX_CONFIG"
  [[ -n $LLADAX_WORKDIR ]] || die "no workdir: pass --workdir gs://BUCKET/runs/NAME or set \
LLADAX_WORKDIR"
  local total=$((HOSTS * TPU_SLICES))
  if [[ $LLADAX_WORKDIR != gs://* ]]; then
    ((total == 1)) || die "--workdir $LLADAX_WORKDIR is local, but the $total workers must write \
one checkpoint together: use gs://BUCKET/path"
    [[ $TPU_SPOT == false ]] || note "warning: a preempted spot TPU loses its disk; use a gs:// \
workdir to resume after preemption"
  fi
  local out ips=() s w node coord="" cmds=() targets=() pids=() failed=0
  for ((s = 0; s < TPU_SLICES; s++)); do
    node=${NODES[s]}
    out=$(node_ips "$node") || exit 2
    mapfile -t ips <<<"$out"
    ((${#ips[@]} == HOSTS)) || die "TPU $node has ${#ips[@]} workers, expected $HOSTS for \
$TPU_TYPE: is --type right?"
    [[ -n $coord ]] || coord=${ips[0]}  # process 0 (slice 0, worker 0) coordinates
    for ((w = 0; w < HOSTS; w++)); do
      targets+=("$node $w")
      cmds+=("$(run_command $((s * HOSTS + w)) "$total" "$coord" "$s")")
    done
  done
  for ((w = 0; w < ${#cmds[@]}; w++)); do
    # shellcheck disable=SC2086  # "node worker"
    if ((DRY_RUN)); then
      tpu_ssh ${targets[w]} "${cmds[w]}"
    else  # all at once: each ssh returns once its worker's job is started
      tpu_ssh ${targets[w]} "${cmds[w]}" &
      pids+=($!)
    fi
  done
  for w in "${pids[@]}"; do wait "$w" || failed=1; done
  ((!failed)) || die "starting the job failed on some worker (see above): '$PROG stop', then run \
again"
  ((DRY_RUN)) || note "started $total process(es); follow with: $PROG logs --follow"
}

# One line per worker: running | exit=N | exit=none (no job, or killed without a status).
JOB_STATE="if [ -f $R_LOGS/train.exit ]; then echo exit=\$(cat $R_LOGS/train.exit); \
elif [ -f $R_LOGS/train.pid ] && kill -0 \"\$(cat $R_LOGS/train.pid)\" 2>/dev/null; then \
echo running; else echo exit=none; fi"

job_state() {  # -> done | running | failed | unknown (some worker did not answer)
  local node out lines=() line n_ok=0
  for node in "${NODES[@]}"; do
    out=$(DRY_VALUE=running query compute tpus tpu-vm ssh "$node" "${LOC[@]}" --worker=all \
      --command="$JOB_STATE") || { echo unknown; return; }
    while IFS= read -r line; do
      [[ $line == running || $line == exit=* ]] && lines+=("$line")
    done <<<"$out"
  done
  for line in "${lines[@]}"; do
    case $line in
      exit=0) n_ok=$((n_ok + 1)) ;;
      running) ;;
      *) echo failed; return ;;
    esac
  done
  if ((${#lines[@]} < HOSTS * TPU_SLICES)); then echo unknown
  elif ((n_ok == ${#lines[@]})); then echo "done"
  else echo running; fi
}

tpu_state() {  # the TPU's (or queued resource's) state; NOT_FOUND when absent, UNKNOWN on errors
  local out err what=(tpu-vm describe "$TPU_NAME" --format="value(state)") dry=READY
  [[ $TPU_QUEUED == false ]] ||
    what=(queued-resources describe "$TPU_NAME" --format="value(state.state)") dry=ACTIVE
  err=$(mktemp)
  if out=$(DRY_VALUE=$dry query compute tpus "${what[@]}" "${LOC[@]}" 2>"$err"); then
    echo "${out:-UNKNOWN}"
  elif grep -q NOT_FOUND "$err"; then
    echo NOT_FOUND
  else
    note "state query failed: $(head -c 300 "$err")"
    echo UNKNOWN
  fi
  rm -f "$err"
}

cmd_status() {
  local node
  [[ $TPU_QUEUED == false ]] || gc compute tpus queued-resources describe "$TPU_NAME" "${LOC[@]}"
  for node in "${NODES[@]}"; do
    gc compute tpus tpu-vm describe "$node" "${LOC[@]}" \
      --format="table(name.basename(),state,acceleratorType,health,networkEndpoints[].ipAddress)"
    tpu_ssh "$node" all "$JOB_STATE; tail -n 1 $R_LOGS/train.log 2>/dev/null || true"
  done
}

cmd_logs() {
  local follow=""
  ((!FOLLOW)) || follow=" -F"
  tpu_ssh "${NODES[SLICE]}" "${WORKER:-all}" \
    "echo \"--- \$(hostname) ---\"; tail -n $LINES$follow $R_LOGS/train.log"
}

cmd_ssh() {
  local node=${NODES[SLICE]} worker=${WORKER:-0}
  [[ $worker != all || ${#EXTRA[@]} -gt 0 ]] || die "--worker all needs a command after --"
  if ((${#EXTRA[@]})); then
    tpu_ssh "$node" "$worker" "${EXTRA[*]}"
  else
    gc compute tpus tpu-vm ssh "$node" "${LOC[@]}" --worker="$worker"
  fi
}

cmd_stop() {
  local node
  for node in "${NODES[@]}"; do
    tpu_ssh "$node" all "if [ -f $R_LOGS/train.pid ] && kill -TERM \"\$(cat $R_LOGS/train.pid)\" \
2>/dev/null; then echo \"\$(hostname): SIGTERM sent (the job checkpoints, then exits)\"; \
else echo \"\$(hostname): no job running\"; fi"
  done
}

cmd_delete() {
  local node
  if [[ $TPU_QUEUED == true ]]; then
    gc compute tpus queued-resources delete "$TPU_NAME" "${LOC[@]}" --force --quiet
  else
    for node in "${NODES[@]}"; do gc compute tpus tpu-vm delete "$node" "${LOC[@]}" --quiet; done
  fi
}

wait_ready() {  # after a direct create: poll until READY
  local state
  while state=$(tpu_state) && [[ $state != READY ]]; do
    note "TPU $TPU_NAME is $state; next check in ${TPU_POLL_SECONDS}s"
    sleep "$TPU_POLL_SECONDS"
  done
}

recover() {  # $1 = the TPU's state: replace the TPU, reinstall, restart the job
  [[ $1 == NOT_FOUND ]] || cmd_delete
  cmd_create
  [[ $TPU_QUEUED == true ]] || ((DRY_RUN)) || wait_ready
  cmd_setup
  cmd_run
}

cmd_watch() {
  [[ -n $LLADAX_CONFIG && -n $LLADAX_WORKDIR ]] || die "watch needs --config and --workdir (the \
job it keeps alive)"
  [[ $LLADAX_WORKDIR == gs://* ]] || die "watch recreates TPUs, which loses their disks: use a \
gs:// --workdir so the job resumes from its checkpoints"
  if ((DRY_RUN)); then
    note "dry run: the state checks, then the commands of one recovery"
    tpu_state >/dev/null
    job_state >/dev/null
    recover PREEMPTED
    return
  fi
  local restarts=0 state
  while :; do
    state=$(tpu_state)
    case $state in
      READY | ACTIVE)
        case $(job_state) in
          done) note "job finished on every worker"; return 0 ;;
          failed)
            ((restarts < TPU_MAX_RESTARTS)) || die "the job failed and all $TPU_MAX_RESTARTS \
restarts are used: see '$PROG logs'"
            restarts=$((restarts + 1))
            note "job failed; restart $restarts/$TPU_MAX_RESTARTS (resumes from the newest \
checkpoint)"
            in_background cmd_run || note "restart failed; retrying after ${TPU_POLL_SECONDS}s" ;;
        esac ;;
      PREEMPTED | TERMINATED | STOPPED | SUSPENDED | FAILED | NOT_FOUND)
        ((restarts < TPU_MAX_RESTARTS)) || die "TPU is $state and all $TPU_MAX_RESTARTS restarts \
are used"
        restarts=$((restarts + 1))
        note "TPU is $state; recovery $restarts/$TPU_MAX_RESTARTS: delete, create, setup, run"
        in_background recover "$state" || note "recovery failed; retrying after \
${TPU_POLL_SECONDS}s" ;;
      *) note "TPU is $state; waiting" ;;
    esac
    sleep "$TPU_POLL_SECONDS"
  done
}

"cmd_$COMMAND"
