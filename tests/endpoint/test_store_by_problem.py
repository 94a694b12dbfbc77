"""The rerun table's rows for the sample store keyed by problem, each a real run through Snakemake against the user's
vLLM server (this folder's), behind a proxy that counts the completion requests the server received: adding a
benchmark, a benchmark's problem count raised, data.num_samples raised by less than a shard (a new shard, then the
last one regrown), the same problem in two benchmarks. Each edit requests only the problems no stored sample
answers, and the samples stored before are the ones the outputs keep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY
from endpoint.conftest import API_KEY, SERVED_NAME
from helpers.faultproxy import FaultProxy
from helpers.sample_store import write_legacy_journal
from helpers.workflow import edited_config, outputs_of_plan, planned_outputs, snakemake

from mathsft.data import benchmark_problems
from mathsft.generate import problem_key

pytestmark = pytest.mark.e2e
KEY_ENV = {"MATHSFT_TEST_TEACHER_KEY": API_KEY}
COMPLETIONS = "/v1/chat/completions"
EVAL = "results/eval/generations/teacher/all.parquet"


def _config(path, proxy, **edits):
    """The tiny config with its teacher at the user's server (through `proxy`), evaluated there alone."""
    return edited_config(TINY, path, **{
        "teacher.endpoint": proxy.base_url, "teacher.model": SERVED_NAME,
        "teacher.api_key_env": "MATHSFT_TEST_TEACHER_KEY", "eval.models": ["teacher"], "eval.pass_k": [1], **edits})


def _run(workdir, proxy, configfile, *targets, invocations=1) -> int:
    """Run `targets` `invocations` times (then check that nothing is left to run); the completion requests the
    server received for them."""
    before = proxy.paths[COMPLETIONS]
    for _ in range(invocations):
        result = snakemake(workdir, configfile, *targets, timeout=900, env=KEY_ENV)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    plan = snakemake(workdir, configfile, "-n", *targets, timeout=300)
    assert outputs_of_plan(plan.stdout) == {}, plan.stdout[-3000:]
    return proxy.paths[COMPLETIONS] - before


# Snakemake 9.27 does not weigh the params of a job downstream of one that runs when every file between them is
# ancient(): an edit that re-prepares the data (data.eval_problems, data.num_samples regrowing a shard) reruns the
# evaluations or the shard it changes at the next invocation, not in the same one (README, the rerun table). These
# rows run twice; the requests are counted over both.
TWO_INVOCATIONS = 2


def _answers(path) -> dict[tuple[str, str, int], str]:
    """(benchmark or source, problem id, sample index) -> response, of an output."""
    return {(row.get("benchmark") or row["source"], row["problem_id"], row["sample_index"]): row["response"]
            for row in pq.read_table(path).to_pylist()}


def _shards(count):
    return [f"results/teacher/{k:05d}.parquet" for k in range(count)]


def _training_problems(workdir, shards) -> set[str]:
    """The problem keys of the first `shards` teacher shards as the data stage last wrote them."""
    return {problem_key(row) for k in range(shards)
            for row in pq.read_table(workdir / "results" / "data" / "shards" / f"{k:05d}.parquet").to_pylist()}


def test_adding_a_benchmark_or_problems_requests_only_the_new_problems(tmp_path, endpoint):
    """Each edit's requests are 2 (samples a problem) for each evaluation problem and each training problem that no
    earlier run sampled. Training problems can change with an evaluation set: one equal to a new benchmark problem
    is removed (decontamination) and the next in order takes its place; only that one is new."""
    workdir = tmp_path / "run"
    with FaultProxy(endpoint.base_url.removesuffix("/v1")) as proxy:
        base = _config(tmp_path / "base.yaml", proxy)
        # 8 training problems and 2 benchmarks of 3, 2 samples each.
        assert _run(workdir, proxy, base, *_shards(2), EVAL) == 8 * 2 + 2 * 3 * 2
        first = _answers(workdir / EVAL)
        sampled = _training_problems(workdir, 2)

        # A benchmark added: its 3 problems (and the shards, whose data identity holds the evaluation sets,
        # rewritten from the store).
        three = {"data.benchmarks": ["chain_sum", "basic_arithmetic", "gsm_symbolic"]}
        added = _config(tmp_path / "added.yaml", proxy, **three)
        requests = _run(workdir, proxy, added, *_shards(2), EVAL)
        new_training = _training_problems(workdir, 2) - sampled
        assert requests == 3 * 2 + len(new_training) * 2, new_training
        print(f"benchmark added: {requests} requests, {len(new_training)} new training problem(s)")
        sampled |= new_training
        second = _answers(workdir / EVAL)
        assert {key: second[key] for key in first} == first and len(second) == 3 * 3 * 2

        # Each benchmark's problem count raised from 3 to 4: one problem a benchmark.
        more = three | {"data.eval_problems": 4}
        raised = _config(tmp_path / "raised.yaml", proxy, **more)
        requests = _run(workdir, proxy, raised, *_shards(2), EVAL, invocations=TWO_INVOCATIONS)
        new_training = _training_problems(workdir, 2) - sampled
        assert requests == 3 * 1 * 2 + len(new_training) * 2, new_training
        print(f"eval_problems 3 -> 4: {requests} requests, {len(new_training)} new training problem(s)")
        sampled |= new_training
        third = _answers(workdir / EVAL)
        assert {key: third[key] for key in second} == second and len(third) == 3 * 4 * 2

        # data.num_samples raised by less than a shard (shard_size 4): 8 -> 10 makes shard 00002 of 2 problems,
        # 10 -> 11 regrows it to 3: only the new problems each time, and the full shards are left as they are.
        shards = {k: pq.read_table(workdir / path).to_pylist() for k, path in enumerate(_shards(2))}
        # (A problem the raised evaluation sets pushed out of shard 00001 comes back in 00002: sampled before.)
        ten = _config(tmp_path / "ten.yaml", proxy, **more, **{"data.num_samples": 10})
        requests = _run(workdir, proxy, ten, *_shards(3))
        new_training = _training_problems(workdir, 3) - sampled
        assert requests == len(new_training) * 2 and 1 <= len(new_training) <= 2, new_training
        print(f"num_samples 8 -> 10: {requests} requests, {len(new_training)} new training problem(s)")
        sampled |= new_training
        grown = pq.read_table(workdir / _shards(3)[2]).to_pylist()
        eleven = _config(tmp_path / "eleven.yaml", proxy, **more, **{"data.num_samples": 11})
        requests = _run(workdir, proxy, eleven, *_shards(3), invocations=TWO_INVOCATIONS)
        new_training = _training_problems(workdir, 3) - sampled
        assert requests == len(new_training) * 2 and len(new_training) <= 1, new_training
        print(f"num_samples 10 -> 11: {requests} requests, {len(new_training)} new training problem(s)")
        regrown = pq.read_table(workdir / _shards(3)[2]).to_pylist()
        assert regrown[:len(grown)] == grown and len(regrown) == 3 * 2
        assert {k: pq.read_table(workdir / path).to_pylist() for k, path in enumerate(_shards(2))} == shards


def _files_config(path, proxy, benchmarks):
    """A files-source config: 4 training problems, and benchmarks `benchmarks` of bench_a.json/bench_b.json."""
    folder = path.parent
    (folder / "train.jsonl").write_text("".join(json.dumps({"problem": f"Compute {i} times {i + 1}.",
                                                            "answer": str(i * (i + 1))}) + "\n" for i in range(4)))
    shared = {"problem": "Compute 12 plus 30.", "answer": "42"}
    (folder / "bench_a.json").write_text(json.dumps([shared, {"problem": "Compute 9 minus 4.", "answer": "5"}]))
    (folder / "bench_b.json").write_text(json.dumps([{"problem": "Compute 6 times 7 minus 1.", "answer": "41"},
                                                     shared]))
    config = yaml.safe_load(_config(path, proxy).read_text())
    config["data"] = {"source": "files", "train_sets": ["mine"], "benchmarks": benchmarks, "num_samples": 4,
                      "shard_size": 4, "datasets": {"mine": {"path": str(folder / "train.jsonl")},
                                                    "a": {"path": str(folder / "bench_a.json")},
                                                    "b": {"path": str(folder / "bench_b.json")}}}
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_problem_in_two_benchmarks_is_requested_once_and_each_benchmark_keeps_its_rows(tmp_path, endpoint):
    """Benchmarks a and b share one problem. From scratch, both: 3 distinct problems are requested; with a alone
    first, adding b requests only b's other problem. Either way the shared problem's samples are the same in both
    benchmarks' rows."""
    with FaultProxy(endpoint.base_url.removesuffix("/v1")) as proxy:
        both = _files_config(tmp_path / "both.yaml", proxy, ["a", "b"])
        assert _run(tmp_path / "both", proxy, both, EVAL) == 3 * 2
        scratch = _answers(tmp_path / "both" / EVAL)

        (tmp_path / "one").mkdir()
        one = _files_config(tmp_path / "one" / "a.yaml", proxy, ["a"])
        assert _run(tmp_path / "one", proxy, one, EVAL) == 2 * 2
        both_later = _files_config(tmp_path / "one" / "ab.yaml", proxy, ["a", "b"])
        assert _run(tmp_path / "one", proxy, both_later, EVAL) == 1 * 2
        later = _answers(tmp_path / "one" / EVAL)
    for answers in (scratch, later):
        assert len(answers) == 2 * 2 * 2
        by_benchmark = {bench: {(pid, k): text for (b, pid, k), text in answers.items() if b == bench}
                        for bench in ("a", "b")}
        shared = set(by_benchmark["a"]) & set(by_benchmark["b"])
        assert len(shared) == 2  # one problem, two samples
        assert all(by_benchmark["a"][key] == by_benchmark["b"][key] for key in shared)
    # Same seeds, same server: the samples do not depend on which run asked for them.
    assert later == scratch


def _to_legacy_store(stage: Path, rows_of: dict[str, list[dict]]) -> None:
    """Rewrite the sample store of a stage's folder as the pipeline wrote it before samples were keyed by problem
    (helpers.sample_store; checked byte for byte against that code once): each output's journal at
    .samples/{output}.{digest}.jsonl, its fingerprint holding its rows' digest (`rows_of`: output stem -> the rows
    its job sampled: a shard's, or a model's when its evaluation was one file), each record its row's index."""
    for folder in [path for path in (stage / ".samples").iterdir() if path.is_dir()]:
        for journal in list(folder.rglob("*.jsonl")):
            lines = journal.read_text().splitlines()
            fingerprint = json.loads(lines[0])["fingerprint"]
            stem = journal.relative_to(folder).parts[0].removesuffix(".jsonl")  # teacher/all.jsonl: teacher
            rows = rows_of[stem]
            index = {problem_key(row): i for i, row in enumerate(rows)}
            samples = []
            for line in lines[1:]:
                record = json.loads(line)
                samples.append({"row_index": index[problem_key(record)]}
                               | {key: value for key, value in record.items() if key not in rows[0]})
            samples.sort(key=lambda sample: (sample["row_index"], sample["sample_index"]))
            write_legacy_journal(stage / f"{stem}.parquet", fingerprint, rows, samples)
        shutil.rmtree(folder)


def test_a_finished_run_whose_store_predates_problem_keys_resamples_nothing(tmp_path, endpoint):
    """A run finished under the store of one journal per output and rows digest, its evaluation one file per model:
    after the upgrade the shards plan nothing, the evaluation moves to its part (results/eval/generations/teacher/
    all.parquet) with no request, and raising samples_per_problem requests only the new index, the old samples
    read from the old journals."""
    workdir = tmp_path / "run"
    with FaultProxy(endpoint.base_url.removesuffix("/v1")) as proxy:
        base = _config(tmp_path / "base.yaml", proxy)
        assert _run(workdir, proxy, base, *_shards(2), EVAL) == 8 * 2 + 2 * 3 * 2
        before = {path: _answers(workdir / path) for path in (*_shards(2), EVAL)}
        data_dir = workdir / "results" / "data"
        _to_legacy_store(workdir / "results" / "teacher", {
            f"{k:05d}": pq.read_table(data_dir / "shards" / f"{k:05d}.parquet").to_pylist() for k in range(2)})
        problems, _ = benchmark_problems([(name, pq.read_table(data_dir / "bench" / f"{name}.parquet").to_pylist())
                                          for name in ("chain_sum", "basic_arithmetic")])
        _to_legacy_store(workdir / "results" / "eval" / "generations", {"teacher": problems})
        legacy = {path: path.read_bytes() for path in (workdir / "results").glob("**/.samples/*.jsonl")}
        assert len(legacy) == 3
        (workdir / EVAL).replace(workdir / "results/eval/generations/teacher.parquet")  # where it was

        for target in _shards(2):
            assert planned_outputs(workdir, base, target) == {}, target
        assert planned_outputs(workdir, base, EVAL) == {"evaluate": {EVAL}}
        assert _run(workdir, proxy, base, EVAL) == 0
        assert _answers(workdir / EVAL) == before[EVAL]
        more = _config(tmp_path / "more.yaml", proxy, **{"teacher.samples_per_problem": 3,
                                                          "eval.samples_per_problem": 3})
        assert _run(workdir, proxy, more, *_shards(2), EVAL) == 8 * 1 + 2 * 3 * 1
    for path, answers in before.items():
        after = _answers(workdir / path)
        assert {key: after[key] for key in answers} == answers and len(after) == len(answers) * 3 // 2, path
    assert {path: path.read_bytes() for path in legacy} == legacy  # read, never changed


def test_per_benchmark_jobs_a_benchmark_added_is_a_job_added_and_switching_requests_nothing(tmp_path, endpoint):
    """eval.jobs: a finished run of one evaluation job per model switched to one per benchmark requests nothing,
    and eval.json is not rewritten (the rescored samples are the same rows); a benchmark added then plans one job,
    its own, which requests its problems alone, and leaves the other parts as they were."""
    workdir = tmp_path / "run"
    summary = workdir / "results" / "eval.json"
    parts = {name: f"results/eval/generations/teacher/{name}.parquet"
             for name in ("chain_sum", "basic_arithmetic", "gsm_symbolic")}
    with FaultProxy(endpoint.base_url.removesuffix("/v1")) as proxy:
        per_model = _config(tmp_path / "per_model.yaml", proxy)
        assert _run(workdir, proxy, per_model, "results/eval.json") == 2 * 3 * 2
        whole, written = _answers(workdir / EVAL), summary.stat().st_mtime_ns

        per_benchmark = _config(tmp_path / "per_benchmark.yaml", proxy, **{"eval.jobs": "per_benchmark"})
        plan = planned_outputs(workdir, per_benchmark)
        assert plan["evaluate"] == {parts["chain_sum"], parts["basic_arithmetic"]}, plan
        assert _run(workdir, proxy, per_benchmark, "results/eval.json") == 0
        assert summary.stat().st_mtime_ns == written
        split = {name: _answers(workdir / parts[name]) for name in ("chain_sum", "basic_arithmetic")}
        assert split["chain_sum"] | split["basic_arithmetic"] == whole and len(split["chain_sum"]) == 3 * 2
        made = {name: (workdir / parts[name]).stat().st_mtime_ns for name in split}

        added = _config(tmp_path / "added.yaml", proxy, **{"eval.jobs": "per_benchmark", "data.benchmarks": [
            "chain_sum", "basic_arithmetic", "gsm_symbolic"]})
        plan = planned_outputs(workdir, added)
        assert plan["evaluate"] == {parts["gsm_symbolic"]}, plan
        requests = _run(workdir, proxy, added, "results/eval.json")
        print(f"benchmark added, one job per benchmark: {requests} requests, evaluate jobs {sorted(plan['evaluate'])}")
        assert requests == 3 * 2
        assert {name: (workdir / parts[name]).stat().st_mtime_ns for name in split} == made
        assert {name: _answers(workdir / parts[name]) for name in split} == split
        assert set(json.loads(summary.read_text())["models"]["teacher"]["benchmarks"]) == set(parts)
