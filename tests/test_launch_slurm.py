"""launch/slurm/train.sbatch on a real single-node SLURM (slurmctld + slurmd on localhost).

The test writes a slurm.conf in a temporary directory (auth/none, no munge, no cgroups,
free ports), starts both daemons, submits the script with the tiny CPU config, sends
SIGUSR1 to the job's tasks as SLURM does before a time limit (``--signal=USR1@120``),
and checks the whole cycle: every rank saves and exits, the script requeues the job, the
requeued job resumes from the checkpoint and finishes; metrics.jsonl covers every step
once and the per-node log shows both attempts.

Skipped, with the reason, where SLURM is not installed (scripts/install_slurm.sh installs
Debian's slurm-wlm) or the test does not run as root (slurmd must).
"""
import json
import os
import shutil
import socket
import signal
import subprocess
import time

import pytest

from dist_helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDED = ("slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue")
missing = [b for b in NEEDED if shutil.which(b) is None]
pytestmark = [
    pytest.mark.skipif(bool(missing), reason=f"SLURM not installed ({', '.join(missing)} "
                       f"missing): run scripts/install_slurm.sh"),
    pytest.mark.skipif(os.geteuid() != 0, reason="slurmd of the local test cluster runs as root"),
]


def _plugin_dir() -> str:
    for d in ("/usr/lib/x86_64-linux-gnu/slurm-wlm", "/usr/lib/aarch64-linux-gnu/slurm-wlm",
              "/usr/lib/slurm-wlm", "/usr/lib64/slurm", "/usr/lib/slurm"):
        if os.path.exists(os.path.join(d, "auth_none.so")):
            return d
    pytest.skip("SLURM's auth_none plugin was not found")


@pytest.fixture()
def cluster(tmp_path):
    d = tmp_path / "slurm"
    for sub in ("state", "spool"):
        (d / sub).mkdir(parents=True)
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=moviegentest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/none
CredType=cred/none
AuthInfo=cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
PluginDir={_plugin_dir()}
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run(["slurmctld", "-f", str(conf)], env=env, check=True, timeout=30)
    subprocess.run(["slurmd", "-f", str(conf), "-N", host], env=env, check=True, timeout=30)
    try:
        deadline = time.time() + 30
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env,
                                           capture_output=True, text=True).stdout:
            assert time.time() < deadline, (d / "slurmctld.log").read_text()[-2000:]
            time.sleep(0.5)
        yield {"env": env, "dir": d}
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
        for daemon in ("slurmd", "slurmctld"):  # the daemons this fixture started
            pid_file = d / f"{daemon}.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass


def _job_field(env, jid, field):
    out = subprocess.run(["scontrol", "show", "job", jid], env=env, capture_output=True,
                         text=True).stdout
    for tok in out.split():
        if tok.startswith(field + "="):
            return tok.split("=", 1)[1]
    return None


def _wait(cond, timeout, what, log=None):
    deadline = time.time() + timeout
    while not cond():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f"\n{log()}" if log else ""))
        time.sleep(0.5)


def _rows(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(x) for x in open(path) if x.strip()]


@pytest.mark.timeout(300)
def test_sbatch_preempt_requeue_resume(cluster, tmp_path):
    env, d = cluster["env"], cluster["dir"]
    run_dir = str(tmp_path / "run")
    steps = 40
    nproc = "2"  # two ranks: torchrun forwards SIGUSR1 to both, they must agree
    env = dict(env, NPROC_PER_NODE=nproc, RDZV_PORT=str(free_port()), MAX_RESTARTS="0")
    jid = subprocess.run(
        ["sbatch", "--parsable", f"--chdir={d}", "--time=10",
         os.path.join(ROOT, "launch", "slurm", "train.sbatch"),
         os.path.join(ROOT, "launch", "configs", "tiny.yaml"), f"--output_dir={run_dir}",
         f"--train.steps={steps}", "--train.log_every=1", "--train.val_every=1000",
         "--data.num_val=16", "--train.progress_bar=false", "--parallel.dp_shard=2"],
        env=env, check=True, capture_output=True, text=True).stdout.strip().split(";")[0]
    batch_log = d / f"slurm-moviegen-{jid}.out"
    node_log = os.path.join(run_dir, "logs", f"{jid}-node0.log")

    def logs():
        parts = [p.read_text()[-3000:] for p in (batch_log,) if p.exists()]
        if os.path.exists(node_log):
            parts.append(open(node_log).read()[-3000:])
        return "\n----\n".join(parts)

    _wait(lambda: any(r.get("step", 0) >= 3 for r in _rows(run_dir)), 150,
          "training to reach step 3", logs)
    # What SLURM does 120 s before the time limit: SIGUSR1 to every task of the job's steps.
    subprocess.run(["scancel", "--signal=USR1", jid], env=env, check=True)
    _wait(lambda: _job_field(env, jid, "Restarts") == "1", 90, "the job to be requeued", logs)
    # A requeued job waits cred_expire (default 120 s, 5 s in this slurm.conf) to start.
    _wait(lambda: _job_field(env, jid, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"),
          200, "the requeued job to finish", logs)
    assert _job_field(env, jid, "JobState") == "COMPLETED", logs()

    batch = batch_log.read_text()
    assert "requeueing" in batch and "restart 1:" in batch, batch
    node = open(node_log).read()
    assert "received SIGUSR1" in node and "resumed from" in node, node[-3000:]
    preempted_at = int(batch.split("preempted at step ")[1].split(":")[0])
    assert 3 <= preempted_at < steps
    ckpt = os.path.join(run_dir, "checkpoints", f"step_{preempted_at:08d}")
    assert f"resumed from {ckpt}" in node
    # both ranks stopped after the same step and wrote their part of one checkpoint
    assert sorted(os.listdir(os.path.join(ckpt, "train_state"))) == \
        ["rank_00000.pt", "rank_00001.pt"]
    train_rows = [r for r in _rows(run_dir) if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    assert os.path.exists(os.path.join(run_dir, "final", "model.safetensors"))
    assert not os.path.exists(os.path.join(run_dir, "preempted"))
