"""Jobs of a Snakemake run on SLURM that no node can take: found with squeue while the run goes on, reported
with the reason SLURM gives, and cancelled when waiting cannot help, so the run fails instead of waiting
without a word (snakemake-executor-plugin-slurm 2.8.0 asks squeue for a job's state only, never its reason)."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
# A field separator that no squeue field holds (a work directory or a rule's wildcards may hold '|').
_SEPARATOR = "\x1f"
# id, reason, partition, CPUs, memory per node, nodes, time limit, gres per node, work directory, comment.
SQUEUE_FORMAT = _SEPARATOR.join(("%i", "%r", "%P", "%C", "%m", "%D", "%l", "%b", "%Z", "%k"))
# Reasons SLURM gives a pending job whose request exceeds every node or a limit of its partition, QOS or
# account: the job never starts. Clusters with EnforcePartLimits=NO (SLURM's default) queue such jobs instead
# of refusing them at sbatch (memory or GPUs beyond every node sbatch refuses anyway, and the plugin says so).
NEVER_STARTS = re.compile(r"PartitionConfig|PartitionNodeLimit|PartitionTimeLimit|BadConstraints|InvalidAccount"
                          r"|InvalidQOS|(?:QOS|Assoc)\w*PerJob\w*")
# Reasons that last while the job's nodes are down, drained or reserved (a maintenance, say): reported, and
# left to SLURM, which starts the job when they return.
NODES_UNAVAILABLE = re.compile(r"ReqNodeNotAvail|Nodes required for job are DOWN|NodeDown|PartitionDown"
                               r"|PartitionInactive")
# Seconds between two looks at the queue: a job no node can take is reported within this (plus the moment
# SLURM takes to give it its reason); Snakemake's own status checks come every 40 to 180 s.
CHECK_INTERVAL_S = 15


@dataclass(frozen=True)
class PendingJob:
    """One pending job as squeue shows it (SQUEUE_FORMAT)."""

    job_id: str
    reason: str
    partition: str
    cpus: str
    memory: str
    nodes: str
    time_limit: str
    gres: str
    workdir: str
    comment: str

    @property
    def rule(self) -> str:
        """The rule, from the comment the plugin gives each job: rule_NAME or rule_NAME_wildcards_VALUES."""
        return re.sub(r"^rule_|_wildcards_.*$", "", self.comment)

    @property
    def wildcards(self) -> str:
        return self.comment.partition("_wildcards_")[2]

    @property
    def request(self) -> str:
        """What the job asks for, in SLURM's words."""
        parts = [f"{self.cpus} CPUs", f"{self.memory} memory", f"{self.nodes} node(s)"]
        if self.gres not in ("", "N/A", "(null)"):
            parts.append(f"gres {self.gres}")
        return f"{', '.join(parts)} and time limit {self.time_limit} in partition {self.partition}"


def parse_squeue(output: str, workdir: str) -> list[PendingJob]:
    """The jobs of Snakemake's SLURM executor (comment rule_...) that run in `workdir`, from squeue's output in
    SQUEUE_FORMAT. One Snakemake run at a time holds a working directory (its lock)."""
    where = os.path.realpath(workdir)
    jobs = []
    for line in output.splitlines():
        fields = line.split(_SEPARATOR)
        if len(fields) != 10:
            continue
        job = PendingJob(*fields)
        if job.comment.startswith("rule_") and os.path.realpath(job.workdir) == where:
            jobs.append(job)
    return jobs


def never_starts(job: PendingJob) -> bool:
    return NEVER_STARTS.fullmatch(job.reason.split(",")[0].strip()) is not None


def nodes_unavailable(job: PendingJob) -> bool:
    return NODES_UNAVAILABLE.match(job.reason) is not None


def jobs_named(jobs: list[PendingJob]) -> str:
    """How a report names jobs of one rule: their SLURM ids, their rule, and the wildcards of a single job."""
    if len(jobs) == 1:
        wildcards = f" ({jobs[0].wildcards})" if jobs[0].wildcards else ""
        return f"SLURM job {jobs[0].job_id} of rule {jobs[0].rule}{wildcards}"
    ids = ", ".join(job.job_id for job in jobs[:10]) + (", ..." if len(jobs) > 10 else "")
    return f"{len(jobs)} SLURM jobs of rule {jobs[0].rule} ({ids})"


def never_starts_message(jobs: list[PendingJob], outcome: str = "Cancelled, so the run stops here") -> str:
    """Why jobs of one rule, request and reason never start, and what to change; `outcome`: what became of them."""
    job = jobs[0]
    return (f"{jobs_named(jobs)}: can never start, SLURM keeps it pending with reason {job.reason}. It asks for "
            f"{job.request}: more than any node there has, or than the partition (or your QOS or account) allows "
            f"(`scontrol show partition {job.partition}` shows the limits, "
            f"`sinfo -N -p {job.partition} -o '%N %c %m %G'` the nodes). {outcome}; lower what rule {job.rule} "
            "asks for (its threads, or mem_mb, runtime, cpus_per_task under set-resources in "
            f"profiles/slurm/config.yaml) or send it to another partition (- {job.rule}:slurm_partition=NAME), "
            "then run again.")


def nodes_unavailable_message(jobs: list[PendingJob]) -> str:
    """Why jobs of one rule wait for nodes that are out, and how to go elsewhere."""
    job = jobs[0]
    return (f"{jobs_named(jobs)}: waiting, SLURM keeps it pending with reason '{job.reason}': the nodes it can run "
            f"on in partition {job.partition} are down, drained or reserved (`sinfo -R -p {job.partition}` says "
            f"why). It starts when they return; to go elsewhere, stop the run (Ctrl-C) and give rule {job.rule} "
            f"another partition (- {job.rule}:slurm_partition=NAME in profiles/slurm/config.yaml).")


def _grouped(jobs: list[PendingJob]) -> list[list[PendingJob]]:
    """Jobs of one rule, reason and request together: one report for a hundred shards that ask too much."""
    groups: dict[tuple[str, str, str], list[PendingJob]] = {}
    for job in jobs:
        groups.setdefault((job.rule, job.reason, job.request), []).append(job)
    return list(groups.values())


@dataclass
class PendingJobWatch:
    """What one run's checks remember: the (job, reason) pairs reported, and each job's reason at the last look
    (a wait for nodes is reported once it lasts two looks: a busy cluster gives that reason for moments)."""

    workdir: str
    logger: logging.Logger = log
    reported: set[tuple[str, str]] = field(default_factory=set)
    last_reasons: dict[str, str] = field(default_factory=dict)

    def check(self) -> list[str]:
        """One look at the run's pending jobs: those that can never start are reported and cancelled, those
        waiting for nodes that are out are reported. Returns the ids of the jobs cancelled."""
        squeue = subprocess.run(["squeue", "--me", "--noheader", "--states=PENDING", f"--format={SQUEUE_FORMAT}"],
                                capture_output=True, text=True, timeout=60)
        if squeue.returncode != 0:
            raise RuntimeError(f"squeue failed: {squeue.stderr.strip()}")
        jobs = parse_squeue(squeue.stdout, self.workdir)
        previous, self.last_reasons = self.last_reasons, {job.job_id: job.reason for job in jobs}
        new = [job for job in jobs if (job.job_id, job.reason) not in self.reported]
        cancelled = []
        for group in _grouped([job for job in new if never_starts(job)]):
            ids = [job.job_id for job in group]
            scancel = subprocess.run(["scancel", *ids], capture_output=True, text=True, timeout=60)
            if scancel.returncode == 0:
                cancelled += ids
                self.logger.error(never_starts_message(group))
            else:
                self.logger.error(never_starts_message(group, f"Could not cancel it ({scancel.stderr.strip()}): "
                                                              f"scancel {' '.join(ids)} yourself"))
            self.reported.update((job.job_id, job.reason) for job in group)
        lasting = [job for job in new if nodes_unavailable(job) and previous.get(job.job_id) == job.reason]
        for group in _grouped(lasting):
            self.logger.warning(nodes_unavailable_message(group))
            self.reported.update((job.job_id, job.reason) for job in group)
        return cancelled


def watch_pending_jobs(workdir: str, logger: logging.Logger = log, interval_s: float = CHECK_INTERVAL_S,
                       stop: threading.Event | None = None) -> threading.Thread:
    """Check the pending jobs of the run in `workdir` every `interval_s` seconds in a daemon thread, until `stop`
    is set or the process ends. A failing squeue is reported once and retried (a controller restarting)."""
    stop = stop or threading.Event()
    watch = PendingJobWatch(workdir, logger)

    def run() -> None:
        failing = False
        while not stop.wait(interval_s):
            try:
                watch.check()
                failing = False
            except FileNotFoundError as error:
                logger.warning(f"Not watching for SLURM jobs that can never start: {error}")
                return
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
                if not failing:
                    logger.warning(f"Could not check for SLURM jobs that can never start ({error}); trying again")
                failing = True

    thread = threading.Thread(target=run, name="slurm-pending-jobs", daemon=True)
    thread.start()
    return thread


def watch_pending_jobs_of(workflow) -> threading.Thread | None:
    """For the workflow's `onstart:`: watch the run's pending jobs when it runs with the SLURM executor (the
    working directory is the run's: the plugin submits every job with -D there)."""
    plugin = getattr(workflow, "executor_plugin", None)
    if plugin is None or plugin.name != "slurm":
        return None
    from snakemake.logging import logger  # what Snakemake prints goes through it

    return watch_pending_jobs(os.getcwd(), logger)
