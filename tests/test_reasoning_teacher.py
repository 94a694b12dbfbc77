"""A reasoning teacher as users serve it: an R1-style chat template that ends the generation prompt with <think>,
at a vLLM server they started, with vLLM's reasoning parser (--reasoning-parser deepseek_r1) on and off
(tests/helpers/reasoning_model.py makes such a teacher of the embedded one). Through Snakemake, the teacher stage,
reward, curation and the teacher's evaluation: with the parser on, each record keeps the thought in its own column
and the answer in `response`; off, the whole reply is in `response`. Either way the curated SFT text is the same
canonical turn, and the rewards and evaluation scores are the same, taken from the answer after the thought."""

from __future__ import annotations

import json

import pytest
from conftest import TINY, keyed_server
from helpers.reasoning_model import reasoning_copy
from helpers.workflow import edited_config, snakemake

from mathsft.io import EVAL_SCHEMA, SCORED_SCHEMA, TRAJECTORY_SCHEMA, read_parquet
from mathsft.turns import sft_text, split_turn

pytestmark = pytest.mark.e2e
TARGETS = ("results/sft/train.parquet", "results/eval/teacher.parquet")
API_KEY = "mathsft-reasoning-teacher-key-41d7"
KEY_ENV = {"MATHSFT_TEST_TEACHER_KEY": API_KEY}


def run_teacher(tmp_path, model, parser: bool) -> dict[str, list[dict]]:
    """The teacher stage to curation, and the teacher's evaluation, with the user's server's parser on or off;
    the rows of each output."""
    name = "parser-on" if parser else "parser-off"
    with keyed_server(model, tmp_path / f"{name}.server.log", API_KEY, served_model_name="reasoner",
                      extra_args=["--reasoning-parser", "deepseek_r1"] if parser else []) as server:
        # The tiny config's 16 teacher samples in one shard, and one benchmark: two jobs that sample.
        config = edited_config(TINY, tmp_path / f"{name}.yaml", **{
            "data.shard_size": 8, "data.benchmarks": ["chain_sum"], "teacher.endpoint": server.base_url,
            "teacher.model": "reasoner", "teacher.api_key_env": "MATHSFT_TEST_TEACHER_KEY",
            "eval.models": ["teacher"], "eval.pass_k": [1]})
        workdir = tmp_path / name
        result = snakemake(workdir, config, *TARGETS, timeout=1200, env=KEY_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = workdir / "results"
    # Read as the stages read them: a column no sample holds a value in is not written (mathsft.io), and reads null.
    rows = lambda paths, schema: [row for path in paths for row in read_parquet(path, schema).to_pylist()]  # noqa: E731
    return {
        "teacher": rows(sorted((results / "teacher").glob("*.parquet")), TRAJECTORY_SCHEMA),
        "scored": rows(sorted((results / "scored").glob("*.parquet")), SCORED_SCHEMA),
        "sft": rows([results / "sft" / "train.parquet", results / "sft" / "val.parquet"], SCORED_SCHEMA),
        "eval": rows([results / "eval" / "teacher.parquet"], EVAL_SCHEMA),
        "funnel": json.loads((results / "sft" / "stats.json").read_text())["funnel"],
    }


def test_a_reasoning_teachers_turn_is_the_same_sft_text_and_score_with_the_parser_on_or_off(tmp_path, teacher_dir):
    model = reasoning_copy(teacher_dir, tmp_path / "reasoner")
    # One server after the other, in a file of its own (not in tests/endpoint/, whose user's server stays up for the
    # whole folder): beside that server and the SLURM run's two teacher shards on the other worker, this test's
    # server (6.1 GB) was the fourth, and the kernel killed it mid-run when the 24 GB machine ran out of memory.
    on, off = (run_teacher(tmp_path, model, parser) for parser in (True, False))
    key = lambda row: (row["problem_id"], row["sample_index"])  # noqa: E731
    for rows in (*on.values(), *off.values()):
        if isinstance(rows, list):
            rows.sort(key=key)

    # The same samples (same seeds, same token ids); the server splits them or not.
    assert [key(r) for r in on["teacher"]] == [key(r) for r in off["teacher"]] and len(on["teacher"]) == 16
    assert all(r["think_prefilled"] is True for r in on["teacher"] + off["teacher"] + on["eval"] + off["eval"])
    assert all(r["reasoning"] is None for r in off["teacher"] + off["eval"])
    assert all(r["reasoning"] is not None for r in on["teacher"] + on["eval"])
    closed = [r for r in off["teacher"] if "</think>" in r["response"]]
    assert closed and all("</think>" not in r["response"] for r in on["teacher"])  # the parser took it out
    for a, b in zip(on["teacher"], off["teacher"]):
        assert split_turn(a["response"], a["reasoning"], True) == split_turn(b["response"], None, True)
        assert (a["completion_tokens"], a["finish_reason"]) == (b["completion_tokens"], b["finish_reason"])

    # Scored on the answer after the thought, the same either way; curated to the same canonical turns.
    assert [(r["reward"], r["extracted_answer"]) for r in sorted(on["scored"], key=key)] == [
        (r["reward"], r["extracted_answer"]) for r in sorted(off["scored"], key=key)]
    assert on["funnel"] == off["funnel"] and on["funnel"]["kept"] > 0, on["funnel"]
    sft_on, sft_off = [sft_text(r) for r in on["sft"]], [sft_text(r) for r in off["sft"]]
    assert sft_on == sft_off and all(text.startswith("<think>\n") and "\n</think>\n\n" in text for text in sft_on)
    assert [(r["reward"], r["verifier_status"]) for r in on["eval"]] == [
        (r["reward"], r["verifier_status"]) for r in off["eval"]]
    print(f"\nfunnel {on['funnel']}; {len(closed)} of {len(off['teacher'])} teacher replies closed their thought")
    kept = key(on["sft"][0])
    for name, rows in (("parser on", on["teacher"]), ("parser off", off["teacher"])):
        record = next(row for row in rows if key(row) == kept)
        print(f"{name}, stored: " + ", ".join(f"{field}={record[field]!r}" for field in
                                              ("response", "reasoning", "think_prefilled", "finish_reason")))
    print(f"SFT text (both): {sft_on[0]!r}")
