"""The teacher stage's standalone path (mathsft.teacher.sample_shard without a shard), on samples already in the
sample store: no server is started, and the reward threshold keeps what curation would keep."""

import json

import pyarrow.parquet as pq

from mathsft import data
from mathsft.generate import ClientSettings, Sampling, journal_fingerprint
from mathsft.io import SCORED_SCHEMA, TRAJECTORY_SCHEMA, TURN_COLUMNS
from mathsft.journal import SampleStore
from mathsft.prompts import build_messages
from mathsft.reward import RewardSettings
from mathsft.sampler import Sampler, ServerSettings
from mathsft.teacher import sample_shard

TASKS, DATA_SEED, PROBLEMS = ["chain_sum"], 3, 4
SAMPLING = Sampling(samples_per_problem=3, temperature=0.6, top_p=0.95, max_tokens=64, seed=5)
# Server settings no server answers to: the test fails if a sample is requested.
SAMPLER = Sampler(server=ServerSettings(model="m", endpoint=None, health_timeout_s=1.0), sampling=SAMPLING,
                  prompt_template="boxed_cot_v1", api="chat", client=ClientSettings())


def _store_samples(output):
    """Journal every sample of the standalone draw: sample k of problem i is right unless k == 1, and cut at
    max_tokens when (i + k) % 3 == 2. Returns the draw's rows."""
    rows = data.take_problems(data.reasoning_gym_problems(TASKS, DATA_SEED), PROBLEMS, data.Counts(), set())
    store = SampleStore(output, journal_fingerprint("m", "boxed_cot_v1", SAMPLING, "chat", []), TRAJECTORY_SCHEMA, rows)
    store.load()
    for i, row in enumerate(rows):
        for k in range(SAMPLING.samples_per_problem):
            answer = "-1" if k == 1 else row["answer"].strip("$")
            messages = json.dumps(build_messages(row["problem"], "boxed_cot_v1"))
            store.append(row | {
                "sample_index": k, "messages": messages,
                "response": f"So \\boxed{{{answer}}}", "finish_reason": "length" if (i + k) % 3 == 2 else "stop",
                "prompt_tokens": 20, "completion_tokens": 5 + 20 * k, "model": "m", "served_model_name": None,
                "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 64,
                "seed": 1000 * i + k, "latency_s": 0.5})
    store.close()
    return rows


def without_turns(schema) -> list[str]:
    """The columns of a file of these samples, stored without a turn's parts (as before those columns existed):
    mathsft.io writes them only where some sample holds them."""
    return [name for name in schema.names if name not in TURN_COLUMNS]


def _sample(output, reward_threshold):
    return sample_shard(SAMPLER, str(output), shard=None, num_samples=PROBLEMS, tasks=TASKS, data_seed=DATA_SEED,
                        reward_threshold=reward_threshold, reward=RewardSettings())


def test_the_standalone_threshold_keeps_the_right_finished_traces_in_sample_order(tmp_path):
    output = tmp_path / "sft.parquet"
    rows = _store_samples(output)
    summary = _sample(output, reward_threshold=1.0)
    kept = pq.read_table(output).to_pylist()
    expected = [(row["problem_id"], k) for i, row in enumerate(rows) for k in range(3) if k != 1 and (i + k) % 3 != 2]
    assert [(r["problem_id"], r["sample_index"]) for r in kept] == expected
    assert pq.read_schema(output).names == without_turns(SCORED_SCHEMA) and all(r["reward"] == 1.0 for r in kept)
    assert summary["kept"] == len(expected) and summary["resumed"] == summary["requested"] == 12


def test_without_a_threshold_every_trajectory_is_written_unscored(tmp_path):
    output = tmp_path / "sft.parquet"
    _store_samples(output)
    summary = _sample(output, reward_threshold=None)
    assert pq.read_schema(output).names == without_turns(TRAJECTORY_SCHEMA) and len(pq.read_table(output)) == 12
    assert "kept" not in summary and summary["shard"] is None and summary["problems"] == PROBLEMS
