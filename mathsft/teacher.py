"""The teacher stage: trajectories sampled for one shard of problems or, standalone as in rLLM's math SFT example,
for problems drawn from reasoning-gym; standalone with a reward threshold, scored and filtered as curation keeps
traces."""

from __future__ import annotations

import json
import logging

from mathsft import data
from mathsft.curate import CurateSettings, kept_rows
from mathsft.io import PROBLEM_SCHEMA, SCORED_SCHEMA, TRAJECTORY_SCHEMA, read_parquet, write_parquet
from mathsft.reward import RewardSettings, score_rows
from mathsft.sampler import Sampler, sample_rows

log = logging.getLogger(__name__)


def sample_shard(sampler: Sampler, output: str, *, shard: str | None, num_samples: int, tasks: list[str],
                 data_seed: int, reward_threshold: float | None, reward: RewardSettings) -> dict:
    """Sample the problems of `shard` (a PROBLEM_SCHEMA parquet) or, without one, the first `num_samples` usable
    problems of reasoning-gym's `tasks` under `data_seed`, and write the trajectories to `output`. With a
    `reward_threshold`, score them and write only the traces curation keeps at that threshold (scored rows).
    Returns the summary it logs."""
    if shard:
        rows = read_parquet(shard, PROBLEM_SCHEMA).to_pylist()
    else:
        rows = data.take_problems(data.reasoning_gym_problems(tasks, data_seed), num_samples, data.Counts(), set())
    # Finished samples go to the sample store as they arrive: a killed job, rerun, requests only the rest, and a
    # rerun with more samples per problem only the new indices.
    records, summary = sample_rows(sampler, rows, output, TRAJECTORY_SCHEMA)
    if reward_threshold is None:
        write_parquet(records, output, TRAJECTORY_SCHEMA)
    else:
        score_rows(records, workers=reward.workers, timeout_s=reward.timeout_s)
        kept = kept_rows(records, threshold_only(reward_threshold, records))
        summary["kept"] = len(kept)
        write_parquet(kept, output, SCORED_SCHEMA)
    summary = {"shard": shard, "problems": len(rows), **summary}
    log.info("summary %s", json.dumps(summary))
    return summary


def threshold_only(reward_threshold: float, records: list[dict]) -> CurateSettings:
    """Curation that drops only wrong (reward below `reward_threshold`) and unfinished traces of `records` (and,
    as curation does, any without token counts): no trace is longer than the longest, none is beyond a cap of all
    of them, and none goes to validation."""
    return CurateSettings(
        reward_threshold=reward_threshold,
        max_length=max((record["prompt_tokens"] + record["completion_tokens"] for record in records
                        if record["prompt_tokens"] is not None and record["completion_tokens"] is not None), default=1),
        max_traces_per_problem=max(len(records), 1),
        val_fraction=0.0,
    )
