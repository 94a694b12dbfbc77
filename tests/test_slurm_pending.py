"""mathsft.slurm without a cluster: which pending jobs of a run can never start, which wait for nodes, and what
the report says. The squeue lines are as Debian's SLURM 22.05 printed them for jobs of this workflow on the test
cluster (tests/test_slurm.py runs the same checks against it)."""

from __future__ import annotations

import logging
import threading

from mathsft.slurm import (SQUEUE_FORMAT, PendingJobWatch, jobs_named, never_starts, never_starts_message,
                           nodes_unavailable, nodes_unavailable_message, parse_squeue, watch_pending_jobs)

SEP = "\x1f"


def squeue_line(job_id, reason, comment="rule_prepare_data", workdir="/runs/a", cpus="64", nodes="1", gres="N/A"):
    return SEP.join((job_id, reason, "debug", cpus, "4000M", nodes, "1:00:00", gres, workdir, comment))


def test_the_squeue_format_holds_every_field_the_report_needs():
    assert SQUEUE_FORMAT.split(SEP) == ["%i", "%r", "%P", "%C", "%m", "%D", "%l", "%b", "%Z", "%k"]


def test_only_this_runs_jobs_are_read_by_working_directory_and_the_plugins_comment(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    (tmp_path / "link").symlink_to(run)
    output = "\n".join([
        squeue_line("11", "PartitionConfig", workdir=str(run)),
        squeue_line("12", "PartitionConfig", workdir=str(tmp_path / "link"), comment="rule_teacher_wildcards_00001"),
        squeue_line("13", "PartitionConfig", workdir=str(other)),  # another run's
        squeue_line("14", "PartitionConfig", workdir=str(run), comment="(null)"),  # not submitted by Snakemake
        "garbage",
    ])
    jobs = parse_squeue(output, str(run))
    assert [(job.job_id, job.rule, job.wildcards) for job in jobs] == [("11", "prepare_data", ""),
                                                                        ("12", "teacher", "00001")]


def test_limits_beyond_every_node_or_the_partition_never_start_and_missing_nodes_only_wait():
    job = lambda reason: parse_squeue(squeue_line("1", reason), "/runs/a")[0]  # noqa: E731
    for reason in ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "QOSMaxCpuPerJobLimit",
                   "AssocMaxWallDurationPerJobLimit", "BadConstraints"):
        assert never_starts(job(reason)) and not nodes_unavailable(job(reason)), reason
    for reason in ("ReqNodeNotAvail, UnavailableNodes:vm",
                   "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions",
                   "PartitionDown"):
        assert nodes_unavailable(job(reason)) and not never_starts(job(reason)), reason
    for reason in ("Priority", "Resources", "Dependency", "None", "QOSMaxJobsPerUserLimit", "AssocGrpCpuLimit"):
        assert not never_starts(job(reason)) and not nodes_unavailable(job(reason)), reason


def test_the_report_names_the_job_rule_reason_request_and_what_to_change():
    (job,) = parse_squeue(squeue_line("16", "PartitionConfig", comment="rule_teacher_wildcards_00003"), "/runs/a")
    message = never_starts_message([job])
    assert message.startswith("SLURM job 16 of rule teacher (00003): can never start, SLURM keeps it pending with "
                              "reason PartitionConfig. It asks for 64 CPUs, 4000M memory, 1 node(s) and time limit "
                              "1:00:00 in partition debug")
    assert "scontrol show partition debug" in message and "- teacher:slurm_partition=NAME" in message
    waiting = nodes_unavailable_message([job])
    assert "waiting" in waiting and "sinfo -R -p debug" in waiting


def test_many_jobs_of_one_rule_asking_too_much_make_one_report():
    jobs = parse_squeue("\n".join(squeue_line(str(i), "PartitionConfig", comment=f"rule_teacher_wildcards_{i:05d}")
                                  for i in range(20, 32)), "/runs/a")
    assert jobs_named(jobs) == "12 SLURM jobs of rule teacher (20, 21, 22, 23, 24, 25, 26, 27, 28, 29, ...)"


def fake_slurm(bin_dir, squeue_output, monkeypatch):
    """squeue printing `squeue_output` and scancel recording its arguments: the controller's answers replayed."""
    bin_dir.mkdir()
    (bin_dir / "squeue.out").write_text(squeue_output)
    (bin_dir / "squeue").write_text(f"#!/bin/sh\ncat {bin_dir / 'squeue.out'}\n")
    (bin_dir / "scancel").write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir / 'cancelled'}\n")
    for name in ("squeue", "scancel"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def test_a_job_that_never_starts_is_cancelled_once_and_a_wait_for_nodes_reported_when_it_lasts(
        tmp_path, monkeypatch, caplog):
    lines = [squeue_line("16", "PartitionConfig"), squeue_line("17", "ReqNodeNotAvail, UnavailableNodes:vm",
                                                                 comment="rule_reward_wildcards_00000", cpus="1"),
             squeue_line("18", "Priority", cpus="1")]
    bin_dir = fake_slurm(tmp_path / "bin", "\n".join(lines), monkeypatch)
    watch = PendingJobWatch("/runs/a", logging.getLogger("test"))
    with caplog.at_level(logging.WARNING, logger="test"):
        assert watch.check() == ["16"]
        assert [r.levelname for r in caplog.records] == ["ERROR"]  # a wait for nodes may be a moment's
        assert watch.check() == []  # job 16 is reported once (squeue may show it a moment after scancel)
        assert [r.levelname for r in caplog.records] == ["ERROR", "WARNING"]
        assert watch.check() == []
    assert (bin_dir / "cancelled").read_text() == "16\n"  # never the job waiting for nodes, nor the queued one
    assert "SLURM job 16 of rule prepare_data: can never start" in caplog.records[0].message
    assert caplog.records[1].message.startswith("SLURM job 17 of rule reward (00000): waiting, SLURM keeps it "
                                                "pending with reason 'ReqNodeNotAvail, UnavailableNodes:vm'")


def test_the_watch_reports_a_failing_squeue_once_and_stops_without_one(tmp_path, monkeypatch, caplog):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact slurm controller' >&2"
                                    "\nexit 1\n")
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="test"):
        thread = watch_pending_jobs("/runs/a", logging.getLogger("test"), interval_s=0.05, stop=stop)
        stop.wait(0.5)
        stop.set()
        thread.join(5)
        (bin_dir / "squeue").unlink()
        stop.clear()
        thread = watch_pending_jobs("/runs/a", logging.getLogger("test"), interval_s=0.05, stop=stop)
        thread.join(5)
    assert not thread.is_alive()
    messages = [r.message for r in caplog.records]
    assert len(messages) == 2, messages
    assert "Unable to contact slurm controller" in messages[0] and "trying again" in messages[0]
    assert messages[1].startswith("Not watching for SLURM jobs that can never start")
