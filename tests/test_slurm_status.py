"""mathsft.slurm_status without a cluster: what the guard yields around a status check that reads some jobs,
none, or all (tests/test_slurm.py runs it through Snakemake against the test cluster, with a failing status
query)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mathsft.slurm_status import keep_unread_jobs


@dataclass(frozen=True)
class Job:
    external_jobid: str


class Executor:
    """A status check shaped like the SLURM plugin's: `states` maps a job id to the state the query read (no
    entry: the query did not return it); None: the query failed."""

    def __init__(self):
        self.states: dict[str, str] | None = {}
        self.succeeded: list[str] = []
        self.failed: list[str] = []

    def report_job_success(self, job):
        self.succeeded.append(job.external_jobid)

    def report_job_error(self, job, msg=None):
        self.failed.append(job.external_jobid)

    async def check_active_jobs(self, active_jobs):
        if self.states is None:
            return  # the plugin 2.8.0 on a failed query: nothing yielded, nothing reported
        for job in active_jobs:
            state = self.states.get(job.external_jobid, "RUNNING")
            if state == "COMPLETED":
                self.report_job_success(job)
            elif state == "FAILED":
                self.report_job_error(job, msg="failed")
            else:
                yield job


def still_followed(executor, jobs) -> list[str]:
    async def collect():
        return [job.external_jobid async for job in executor.check_active_jobs(jobs)]

    return asyncio.run(collect())


def test_jobs_a_failed_query_could_not_read_stay_followed_and_ended_jobs_do_not(caplog):
    executor = Executor()
    keep_unread_jobs(executor, logging.getLogger("test"))
    jobs = [Job("5"), Job("6"), Job("7")]
    executor.states = None
    with caplog.at_level(logging.WARNING, "test"):
        assert still_followed(executor, jobs) == ["5", "6", "7"]
        assert still_followed(executor, jobs) == ["5", "6", "7"]
        executor.states = {"5": "COMPLETED", "6": "FAILED"}
        assert still_followed(executor, jobs) == ["7"]
    assert (executor.succeeded, executor.failed) == (["5"], ["6"])
    assert [record.getMessage() for record in caplog.records] == [
        "SLURM: the state of 3 job(s) (5, 6, 7) could not be read (the status query failed: run with --verbose "
        "for its error); they are still followed and asked about again at the next status check.",
        "SLURM: job states read again after 2 failed status check(s).",
    ]
    # The executor's own report methods are back once a check is over.
    assert executor.report_job_success.__func__ is Executor.report_job_success


def test_a_check_that_reads_every_job_is_passed_through_and_installing_twice_wraps_once(caplog):
    executor = Executor()
    first = keep_unread_jobs(executor)
    assert keep_unread_jobs(executor) is first
    executor.states = {"1": "COMPLETED"}
    with caplog.at_level(logging.WARNING):
        assert still_followed(executor, [Job("1"), Job("2")]) == ["2"]
    assert executor.succeeded == ["1"] and caplog.records == []
