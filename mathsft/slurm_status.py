"""A SLURM job whose state a status check could not read stays followed: snakemake-executor-plugin-slurm 2.8.0
forgets it instead, and the run then waits forever for a job that has long ended.

Why: the plugin's status check (`check_active_jobs`) must yield every job still running and report every job
that ended. When its status query fails on every attempt (squeue or sacct timing out on a busy controller, or
sacct on a cluster without accounting, which the plugin switches to whenever one `scontrol show config` fails)
it yields nothing and reports nothing, so Snakemake drops the jobs from the ones it follows. Reproduced on the
test cluster (tests/test_slurm.py): one failed `scontrol show config` while a 3 s job ran, and Snakemake was
still waiting for it minutes later. Kept here until the plugin keeps such jobs itself (its issue 207)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class UnreadJobs:
    """Wraps an executor's status check: every job it was asked about and neither yielded (still running) nor
    reported (ended) is yielded too, so the next check asks about it again. A failing streak is reported once
    when it starts and once when it ends."""

    def __init__(self, executor, logger: logging.Logger = log):
        self.executor = executor
        self.logger = logger
        self.check: Callable = executor.check_active_jobs
        self.unread_checks = 0  # status checks in a row that left jobs unread

    async def check_active_jobs(self, active_jobs: list) -> AsyncIterator:
        answered: set[int] = set()
        with self._noting_reports(answered):
            async for job in self.check(active_jobs):
                answered.add(id(job))
                yield job
        unread = [job for job in active_jobs if id(job) not in answered]
        if unread:
            if self.unread_checks == 0:
                ids = ", ".join(str(job.external_jobid) for job in unread[:10]) + (", ..." if len(unread) > 10 else "")
                self.logger.warning(
                    f"SLURM: the state of {len(unread)} job(s) ({ids}) could not be read (the status query "
                    "failed: run with --verbose for its error); they are still followed and asked about again "
                    "at the next status check.")
            self.unread_checks += 1
            for job in unread:
                yield job
        elif self.unread_checks:
            self.logger.warning(f"SLURM: job states read again after {self.unread_checks} failed status check(s).")
            self.unread_checks = 0

    @contextmanager
    def _noting_reports(self, answered: set[int]) -> Iterator[None]:
        """For the length of one check, the executor's reports of ended jobs also note the job in `answered`."""
        executor = self.executor
        success, error = executor.report_job_success, executor.report_job_error

        def reported_success(job, *args, **kwargs):
            answered.add(id(job))
            return success(job, *args, **kwargs)

        def reported_error(job, *args, **kwargs):
            answered.add(id(job))
            return error(job, *args, **kwargs)

        executor.report_job_success, executor.report_job_error = reported_success, reported_error
        try:
            yield
        finally:
            del executor.report_job_success, executor.report_job_error  # the class's own methods again


def keep_unread_jobs(executor, logger: logging.Logger = log) -> UnreadJobs:
    """Install UnreadJobs on `executor` (once: a second call returns the first)."""
    installed = getattr(executor.check_active_jobs, "__self__", None)
    if isinstance(installed, UnreadJobs):
        return installed
    guard = UnreadJobs(executor, logger)
    executor.check_active_jobs = guard.check_active_jobs
    return guard


def keep_unread_jobs_of(workflow) -> UnreadJobs | None:
    """For the workflow's `onstart:` (after Snakemake made its executor, before the first job): the guard, when
    the run uses the SLURM executor."""
    plugin = getattr(workflow, "executor_plugin", None)
    scheduler = getattr(workflow, "scheduler", None)
    if plugin is None or plugin.name != "slurm" or scheduler is None:
        return None
    from snakemake.logging import logger  # what Snakemake prints goes through it

    return keep_unread_jobs(scheduler._executor, logger)
