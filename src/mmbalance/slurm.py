"""`python -m mmbalance slurm-check`: what a grid will ask of a SLURM cluster, checked before submitting.

A request no node of the partition can meet fails in one of two ways, neither of
which Snakemake explains: sbatch refuses it ("Memory specification can not be
satisfied", "Requested node configuration is not available"), or, for CPUs,
accepts it and the job stays PENDING with reason ``PartitionConfig`` for good.
And the SLURM executor plugin (2.8.0) polls job states with ``sacct`` or
``squeue``: ``sacct`` needs an accounting database (slurmdbd) and reports a
cancelled job as "CANCELLED by <uid>", which the plugin does not recognise as
failed; ``squeue`` needs ``MinJobAge`` of at least 3 x the profile's
``slurm-init-seconds-before-status-checks``, or the plugin silently falls back
to ``sacct``. This module reads the profile and the cluster and says which of
these apply, naming the setting to change.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

# Rules whose threads, mem_mb and runtime come from the config's train block (workflow/rules/*.smk).
CONFIG_SIZED_RULES = ("train", "tune_trial", "extract_embeddings")


def _run(command: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return 127, f"{command[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(command)}: no answer within 30 s"
    return done.returncode, (done.stdout if done.returncode == 0 else done.stderr or done.stdout).strip()


def sacct_works() -> tuple[bool, str]:
    """Whether the accounting database answers (`sacct` exits 1 with "Slurm accounting storage is
    disabled" without slurmdbd)."""
    code, text = _run(["sacct", "-n", "-X", "-S", "now", "-o", "JobID"])
    return code == 0, text.splitlines()[0] if text else ""


def min_job_age() -> int | None:
    """Seconds SLURM keeps a finished job visible to squeue (slurm.conf MinJobAge)."""
    code, text = _run(["scontrol", "show", "config"])
    match = re.search(r"^MinJobAge\s*=\s*(\d+)", text, re.MULTILINE) if code == 0 else None
    return int(match.group(1)) if match else None


def minutes(limit: str) -> float | None:
    """A SLURM time limit (``infinite``, ``M``, ``H:M:S``, ``D-H:M:S``) in minutes; None for infinite."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:  # minutes
        hours, mins, secs = 0, parts[0], 0
    else:
        hours, mins, secs = ([0] * (3 - len(parts)) + parts)[-3:]
    return (int(days or 0) * 24 + hours) * 60 + mins + secs / 60


def gpus(gres: str) -> int:
    """GPUs in a sinfo %G field such as ``gpu:2``, ``gpu:a100:4(S:0-1)`` or ``(null)``."""
    return sum(int(m.group(1)) for m in re.finditer(r"gpu(?::[\w.-]+)?:(\d+)", gres))


def partition_nodes(partition: str | None) -> tuple[str, list[dict]]:
    """The partition (the cluster's default when None) and each of its nodes' CPUs, memory (MB), GPUs, time limit."""
    code, text = _run(["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"])
    if code != 0:
        raise RuntimeError(f"sinfo failed: {text}")
    nodes = []
    for line in text.splitlines():
        name, cpus, memory, gres, limit = line.split("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        if partition is None and default:
            partition = name
        if name == partition:
            nodes.append({"cpus": int(cpus), "mem_mb": int(memory.rstrip("+")), "gpus": gpus(gres), "limit": minutes(limit)})
    if partition is None:
        raise RuntimeError("the cluster has no default partition: set slurm_partition in the SLURM profile")
    return partition, nodes


def check(config: dict, profile_path: Path, partition: str | None, say=print) -> int:
    """Print what the profile and config ask and whether the cluster can give it; the number of problems."""
    profile = yaml.safe_load(Path(profile_path).read_text()) or {}
    problems = 0

    def problem(text: str) -> None:
        nonlocal problems
        problems += 1
        say(f"PROBLEM: {text}")

    # --- job states: sacct or squeue
    status = profile.get("slurm-status-command", "sacct")
    delay = int(profile.get("slurm-init-seconds-before-status-checks", 40))
    accounting, why = sacct_works()
    age = min_job_age()
    say(f"accounting database (sacct): {'works' if accounting else 'does not work (' + why + ')'}; MinJobAge: {age} s")
    if status == "squeue":
        if age is None or age < 3 * delay:
            problem(f"the profile polls with squeue, but MinJobAge ({age} s) is below 3 x slurm-init-seconds-before-status-checks "
                    f"({delay} s): the plugin then silently uses sacct{'' if accounting else ', which does not work here, and waits forever'}; "
                    f"lower slurm-init-seconds-before-status-checks in {profile_path} to {max(1, (age or 0) // 3)} or less")
        else:
            say(f"job states: squeue (MinJobAge {age} s >= 3 x {delay} s): finished, failed and cancelled jobs are all seen")
    elif not accounting:
        problem(f"the profile polls with sacct, which does not work on this cluster: Snakemake would wait forever; "
                f"set slurm-status-command: squeue in {profile_path}")
    else:
        say("job states: sacct. A cancelled or preempted job is reported as 'CANCELLED by <uid>', which plugin 2.8.0 does "
            "not count as failed: Snakemake waits for it forever; slurm-status-command: squeue avoids that")

    # --- does a training job fit a node of the partition?
    partition = partition or (profile.get("default-resources") or {}).get("slurm_partition")
    train_partition = ((profile.get("set-resources") or {}).get("train") or {}).get("slurm_partition", partition)
    try:
        train_partition, nodes = partition_nodes(train_partition)
    except RuntimeError as error:
        problem(str(error))
        return problems
    if not nodes:
        problem(f"partition {train_partition!r} has no nodes (sinfo); set slurm_partition in {profile_path}")
        return problems
    train = config["train"]
    want_gpu = 0 if train["device"] == "cpu" else 1
    say(f"a training job asks: --cpus-per-task={train['threads']} --mem {train['mem_mb']} -t {train['runtime']}"
        + (f" --gpus={want_gpu}" if want_gpu else "") + f" on partition {train_partition} ({', '.join(CONFIG_SIZED_RULES)} are sized by train.*)")
    fitting = [n for n in nodes if n["cpus"] >= train["threads"] and n["mem_mb"] >= train["mem_mb"] and n["gpus"] >= want_gpu]
    biggest = {key: max(n[key] for n in nodes) for key in ("cpus", "mem_mb", "gpus")}
    if not fitting:
        if biggest["cpus"] < train["threads"]:
            problem(f"train.threads is {train['threads']}, the largest node of {train_partition} has {biggest['cpus']} CPUs: "
                    "sbatch accepts the job and it stays PENDING (reason PartitionConfig) for good; lower train.threads")
        if biggest["mem_mb"] < train["mem_mb"]:
            problem(f"train.mem_mb is {train['mem_mb']}, the largest node of {train_partition} has {biggest['mem_mb']} MB: "
                    "sbatch refuses the job ('Memory specification can not be satisfied'); lower train.mem_mb")
        if biggest["gpus"] < want_gpu:
            problem(f"train.device is {train['device']!r} (the job asks --gpus=1), and no node of {train_partition} has a GPU "
                    "('Requested node configuration is not available'); set train.device: cpu, or a GPU partition "
                    f"under set-resources.train.slurm_partition in {profile_path}")
        if biggest["cpus"] >= train["threads"] and biggest["mem_mb"] >= train["mem_mb"] and biggest["gpus"] >= want_gpu:
            problem(f"no single node of {train_partition} has {train['threads']} CPUs, {train['mem_mb']} MB and {want_gpu} GPU(s) "
                    "together; lower train.threads or train.mem_mb")
    limits = [n["limit"] for n in nodes if n["limit"] is not None]
    if limits and max(limits) < train["runtime"]:
        problem(f"train.runtime is {train['runtime']} min, partition {train_partition} allows {max(limits):g} min: "
                "the job stays PENDING (reason PartitionTimeLimit) or sbatch refuses it; lower train.runtime (a job cut "
                "by its time limit is retried once and resumes from its checkpoint)")
    if not problems:
        say(f"OK: {len(fitting)} node(s) of {train_partition} can run a training job")
    return problems
