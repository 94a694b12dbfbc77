"""What a run trains on and in what order: the curated traces tokenised (too long ones dropped, never truncated)
and each epoch's optimizer steps as micro-batches of example indices, packed or padded."""

from __future__ import annotations

import json
import random

from mathsft.chat import tokenize_example
from mathsft.io import SCORED_SCHEMA, read_parquet
from mathsft.packing import pack
from mathsft.train_settings import TrainConfig
from mathsft.turns import sft_text


def load_examples(paths: tuple[str, ...] | list[str], tokenizer, end_of_turn_id: int,
                  max_length: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Tokenised (input_ids, labels) for each curated trace of the parquet files `paths`, read in that order as
    one set, each as the teacher's whole turn (mathsft.turns.sft_text: a thought and its answer, however the
    server returned them); traces longer than `max_length` are dropped (counted), never truncated: a truncated
    trace teaches the model to stop before its answer."""
    rows = [row for path in paths for row in read_parquet(path, SCORED_SCHEMA).to_pylist()]
    examples, too_long = [], 0
    for row in rows:
        input_ids, labels = tokenize_example(tokenizer, json.loads(row["messages"]), sft_text(row), end_of_turn_id)
        if len(input_ids) > max_length:
            too_long += 1
            continue
        examples.append((input_ids, labels))
    return examples, too_long


def epoch_plan(lengths: list[int], cfg: TrainConfig, epoch: int, rank: int, world_size: int) -> list[list[list[int]]]:
    """This rank's micro-batches (example indices) for each optimizer step of `epoch`. The order depends on
    (seed, epoch) only, so a resumed run replays exactly the steps it has not done."""
    order = list(range(len(lengths)))
    random.Random(cfg.seed + epoch).shuffle(order)
    steps = []
    for start in range(0, len(order), cfg.global_batch_size):
        mine = order[start : start + cfg.global_batch_size][rank::world_size]
        if cfg.packing:
            budget = cfg.max_length * cfg.micro_batch_size_per_device
            steps.append([[mine[i] for i in group] for group in pack([lengths[i] for i in mine], budget)])
        else:
            micro_batch_size = cfg.micro_batch_size_per_device
            steps.append([mine[i : i + micro_batch_size] for i in range(0, len(mine), micro_batch_size)])
    return steps
