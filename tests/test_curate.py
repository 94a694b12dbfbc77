import hashlib
import json

import pyarrow.parquet as pq
import pytest

from mathsft.curate import curate
from mathsft.io import SCORED_SCHEMA, write_parquet


def _row(pid, k, reward=1.0, finish="stop", tokens=10):
    return {
        "problem_id": pid, "source": "s", "problem": f"p{pid}", "answer": "$1$", "sample_index": k,
        "messages": json.dumps([{"role": "user", "content": f"p{pid}"}]), "response": "\\boxed{1}",
        "finish_reason": finish, "prompt_tokens": 5, "completion_tokens": tokens, "model": "m",
        "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 100, "seed": k,
        "latency_s": 0.1, "extracted_answer": "1", "reward": reward, "verifier_status": "correct",
    }


@pytest.fixture
def scored_shards(tmp_path):
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(40)]
    rows = []
    for pid in ids:
        rows += [_row(pid, 0, tokens=30), _row(pid, 1, tokens=20), _row(pid, 2, tokens=10, reward=0.0),
                 _row(pid, 3, tokens=5, finish="length")]
    paths = []
    for i in range(2):
        path = tmp_path / f"scored{i}.parquet"
        write_parquet(rows[i::2], path, SCORED_SCHEMA)
        paths.append(str(path))
    return paths


def test_curation_keeps_only_correct_finished_traces_shortest_first(tmp_path, scored_shards):
    out = {k: str(tmp_path / f"{k}.parquet") for k in ("train", "val")}
    stats = curate(scored_shards, out["train"], out["val"], str(tmp_path / "stats.json"),
                   reward_threshold=1.0, max_traces_per_problem=1, val_fraction=0.25)
    rows = pq.read_table(out["train"]).to_pylist() + pq.read_table(out["val"]).to_pylist()
    assert len(rows) == 40
    assert all(r["reward"] == 1.0 and r["finish_reason"] == "stop" and r["sample_index"] == 1 for r in rows)
    assert stats["funnel"] == {"generated": 160, "correct": 120, "finished": 80, "problems": 40, "kept": 40}
    assert "read_parquet($files)" in json.loads((tmp_path / "stats.json").read_text())["sql"]


def test_no_validation_problem_appears_in_training(tmp_path, scored_shards):
    out = {k: str(tmp_path / f"{k}.parquet") for k in ("train", "val")}
    stats = curate(scored_shards, out["train"], out["val"], str(tmp_path / "s.json"), 1.0, 4, 0.3)
    train_ids = set(pq.read_table(out["train"]).column("problem_id").to_pylist())
    val_ids = set(pq.read_table(out["val"]).column("problem_id").to_pylist())
    assert train_ids and val_ids and not train_ids & val_ids
    assert stats["splits"]["train"]["traces"] == 2 * len(train_ids)


def test_same_inputs_give_byte_identical_outputs(tmp_path, scored_shards):
    digests = []
    for run in range(2):
        train, val = tmp_path / f"t{run}.parquet", tmp_path / f"v{run}.parquet"
        # Shard order reversed on the second run: the output must not depend on it.
        curate(scored_shards[:: 1 if run == 0 else -1], str(train), str(val), str(tmp_path / f"s{run}.json"), 1.0, 2, 0.2)
        digests.append((train.read_bytes(), val.read_bytes()))
    assert digests[0] == digests[1]


def test_zero_threshold_would_keep_wrong_answers(tmp_path, scored_shards):
    stats = curate(scored_shards, str(tmp_path / "t.parquet"), str(tmp_path / "v.parquet"), str(tmp_path / "s.json"),
                   reward_threshold=0.0, max_traces_per_problem=4, val_fraction=0.1)
    assert stats["funnel"]["kept"] == 120  # rLLM's default: the wrong trace of every problem is kept too
