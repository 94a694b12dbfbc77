"""Curation: one DuckDB query (sql/curate.sql) from scored trajectories to the SFT train/val sets and their funnel,
and the same query's verdict on a list of scored rows."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mathsft.io import OPTIONAL_COLUMNS, SCORED_SCHEMA, write_json, write_parquet

SQL_PATH = Path(__file__).with_name("sql") / "curate.sql"
SELECTIONS = ("shortest", "random")
# The funnel's steps, each a subset of the one before, and the stages (sql/curate.sql) that leave at each step.
FUNNEL_STEPS = ("generated", "correct", "finished", "fits", "kept")
DROPPED_STAGES = ("wrong", "unfinished", "too_long", "over_cap")
LENGTH_BINS = 30  # of the teacher's length histogram in stats.json (teacher_lengths)


@dataclass(frozen=True, kw_only=True)
class CurateSettings:
    """What curation keeps: each value decides the curated set, and stats.json records them (its params, in this
    order). The defaults are config.schema.yaml's (curate.*); max_length is train.max_length, always given."""

    reward_threshold: float = field(
        default=1.0, metadata={"help": "keep traces with reward >= this (rLLM's 0.0 would keep wrong answers)"})
    max_length: int = field(metadata={"help": "the training max length (train.max_length): traces whose prompt + "
                                              "completion tokens exceed it are dropped and counted, never truncated"})
    max_traces_per_problem: int = 4
    selection: str = field(default="shortest", metadata={
        "choices": SELECTIONS,
        "help": "which traces of a problem to keep: the shortest, or a random choice fixed by --seed"})
    seed: int = field(default=0, metadata={"help": "seed of --selection random"})
    val_fraction: float = 0.1


def check_inputs(files: list[str]) -> None:
    """Fail before any work if a scored shard is missing, not parquet, or lacks a column of SCORED_SCHEMA.

    Reads only each file's footer, so it costs milliseconds however big the shards are.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not files:
        raise ValueError("no scored shards given to curate: check the inputs (results/scored/*.parquet)")
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: scored shard not found; run the reward stage for it first")
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise ValueError(f"{path}: not a readable parquet file ({exc}); rerun the reward stage for it") from exc
        missing = [name for name in SCORED_SCHEMA.names if name not in names and name not in OPTIONAL_COLUMNS]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; is this the output of the reward stage?")


def curate(files: list[str], train_path: str, val_path: str, stats_path: str, settings: CurateSettings, *,
           threads: int | None = None) -> dict:
    """Run sql/curate.sql over `files` with `settings`; write the kept traces to train/val parquet and the funnel,
    split sizes, params and SQL to stats.json. Returns the stats. `threads` (default: DuckDB's, all cores) never
    changes the outputs."""
    sql = SQL_PATH.read_text()
    params = asdict(settings)
    # Pass 1: the annotation of every trace, small columns only.
    con = _annotated(files, settings, sql, threads)
    _check_unique(con, files)
    splits = {split: {"traces": 0, "problems": 0} for split in ("train", "val")}
    for split, traces, problems in con.sql(
        "SELECT split, count(*), count(DISTINCT problem_id) FROM curation WHERE stage = 'kept' GROUP BY split"
    ).fetchall():
        splits[split] = {"traces": traces, "problems": problems}
    stats = {**_funnel(con), "splits": splits, "teacher_lengths": teacher_lengths(con), "params": params,
             "inputs": sorted(files), "sql": sql}

    # Pass 2: the kept traces with all their columns, fetched by their place in the files (a late
    # materialisation), train first, each side in (problem_id, sample_index) order: one read of the texts,
    # and only the kept ones are held, once, in Arrow.
    # Shards scored before a column of OPTIONAL_COLUMNS existed lack it: it is left out here, and written as nulls.
    present = {name for name, *_ in con.sql("DESCRIBE SELECT * FROM read_parquet($files, union_by_name = true)",
                                             params={"files": list(files)}).fetchall()}
    columns = ", ".join(f"t.{name}" for name in SCORED_SCHEMA.names if name in present)
    kept = con.sql(
        f"""SELECT {columns}
            FROM read_parquet($files, union_by_name = true) t
            JOIN (SELECT file_index, file_row_number, split FROM curation WHERE stage = 'kept') k
              ON t.file_index = k.file_index AND t.file_row_number = k.file_row_number
            ORDER BY k.split, t.problem_id, t.sample_index""",
        params={"files": list(files)},
    ).to_arrow_table()
    con.close()
    n_train = splits["train"]["traces"]
    write_parquet(_even_chunks(kept.slice(0, n_train)), train_path, SCORED_SCHEMA)
    write_parquet(_even_chunks(kept.slice(n_train)), val_path, SCORED_SCHEMA)
    del kept
    write_json(stats, stats_path)
    return stats


def kept_rows(rows: list[dict], settings: CurateSettings) -> list[dict]:
    """The rows (scored traces with SCORED_SCHEMA's fields) that sql/curate.sql keeps under `settings`, in their own
    order: one definition of a kept trace for the curate stage and the teacher's standalone filter."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "scored.parquet")
        write_parquet(rows, path, SCORED_SCHEMA)
        con = _annotated([path], settings, SQL_PATH.read_text())
        kept = con.sql("SELECT file_row_number FROM curation WHERE stage = 'kept' ORDER BY file_row_number").fetchall()
        con.close()
    return [rows[index] for index, in kept]


def _annotated(files: list[str], settings: CurateSettings, sql: str, threads: int | None = None):
    """A DuckDB connection holding the table `curation`: `sql`'s annotation of every trace in `files` (its stage
    and split, and where it lies), once the settings and the files are checked."""
    import duckdb

    if not 0.0 <= settings.val_fraction < 1.0:
        raise ValueError(f"curate.val_fraction must be in [0, 1), got {settings.val_fraction}")
    if settings.max_traces_per_problem < 1:
        raise ValueError(f"curate.max_traces_per_problem must be at least 1, got {settings.max_traces_per_problem}")
    if settings.max_length < 1:
        raise ValueError(f"max_length must be a positive token count (train.max_length), got {settings.max_length}")
    if settings.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {settings.selection!r}")
    check_inputs(files)

    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    # Small columns only: DuckDB prunes the unused columns from the scan, so the texts (problem, messages,
    # response: nearly all the bytes) are not read here.
    con.execute(
        f"""CREATE TEMP TABLE curation AS
            SELECT file_index, file_row_number, problem_id, sample_index, source, stage, split, completion_tokens,
                   max_tokens, finish_reason FROM ({sql})""",
        asdict(settings) | {"files": list(files)},
    )
    return con


def _even_chunks(table, rows: int = 2048):
    """`table` in chunks of `rows` rows (the last one shorter): pyarrow's parquet bytes depend on the chunk
    layout, and DuckDB's layout on its thread count. A window spanning two chunks is copied; DuckDB's chunks
    are whole multiples of its vector size (2048 rows), so usually none is."""
    import pyarrow as pa

    batches = [batch for start in range(0, table.num_rows, rows)
               for batch in table.slice(start, rows).combine_chunks().to_batches()]
    return pa.Table.from_batches(batches, schema=table.schema)


def _check_unique(con, files: list[str]) -> None:
    """A trace is (problem_id, sample_index); a repeat (a shard given twice, say) would be kept twice."""
    repeats = con.sql(
        """SELECT problem_id, sample_index FROM curation GROUP BY problem_id, sample_index HAVING count(*) > 1
           ORDER BY problem_id, sample_index LIMIT 3"""
    ).fetchall()
    if repeats:
        where = []
        for problem_id, sample_index in repeats:  # which files, asked only now: a list per trace costs 5x more
            indices = con.sql("SELECT file_index FROM curation WHERE problem_id = $p AND sample_index = $k ORDER BY 1",
                              params={"p": problem_id, "k": sample_index}).fetchall()
            where.append(f"problem {problem_id} sample {sample_index} in {', '.join(files[i] for i, in indices)}")
        raise ValueError(f"repeated traces across the scored shards ({'; '.join(where)}); is a shard listed twice?")


def teacher_lengths(con, bins: int = LENGTH_BINS) -> dict:
    """What the teacher's cap cost, per source: a histogram of completion tokens over [0, max_tokens] (`bins` equal
    bins; a trace cut at the cap falls in the last), how many traces were cut there (finish_reason length), and the
    problems that lost every sample to it (the funnel counts cut traces, not which problems they starve)."""
    rows = con.sql(
        """SELECT source, problem_id, completion_tokens, max_tokens, finish_reason = 'length' AS cut
           FROM curation ORDER BY source, problem_id, sample_index"""
    ).fetchall()
    caps = sorted({cap for *_, cap, _ in rows})
    top = max(caps, default=0) or 1
    by_source: dict[str, dict] = {}
    per_problem: dict[tuple[str, str], bool] = {}
    for source, problem_id, tokens, _, cut in rows:
        entry = by_source.setdefault(source, {"samples": 0, "cut": 0, "counts": [0] * bins})
        entry["samples"] += 1
        entry["cut"] += bool(cut)
        entry["counts"][min(bins - 1, (tokens or 0) * bins // top)] += 1
        per_problem[(source, problem_id)] = per_problem.get((source, problem_id), True) and bool(cut)
    for source, entry in by_source.items():
        lost = sorted(problem for (where, problem), all_cut in per_problem.items() if where == source and all_cut)
        entry["problems"] = sum(where == source for where, _ in per_problem)
        entry["problems_all_cut"] = len(lost)
        entry["problems_all_cut_ids"] = lost[:20]  # the first few, to look up
    return {"max_tokens": caps, "bin_edges": [top * i / bins for i in range(bins + 1)], "by_source": by_source}


def _funnel(con) -> dict:
    """The funnel generated -> correct -> finished -> fits -> kept, in total and per source, and the drops by stage."""
    # Each step counts the traces that did not leave at it or an earlier one.
    steps = ", ".join(
        f"count(*) FILTER (stage NOT IN ({', '.join(repr(s) for s in DROPPED_STAGES[:i])})) AS {step}" if i else
        f"count(*) AS {step}"
        for i, step in enumerate(FUNNEL_STEPS)
    )
    rows = con.sql(f"SELECT source, {steps} FROM curation GROUP BY source ORDER BY source").fetchall()
    by_source = {source: dict(zip(FUNNEL_STEPS, counts)) for source, *counts in rows}
    total = {step: sum(counts[step] for counts in by_source.values()) for step in FUNNEL_STEPS}
    dropped = dict(con.sql("SELECT stage, count(*) FROM curation WHERE stage <> 'kept' GROUP BY stage").fetchall())
    problems = con.sql(
        "SELECT count(DISTINCT problem_id), count(DISTINCT problem_id) FILTER (stage = 'kept') FROM curation"
    ).fetchall()[0]
    return {
        "funnel": total,
        "funnel_by_source": by_source,
        "dropped": {stage: dropped.get(stage, 0) for stage in DROPPED_STAGES},
        "problems": {"generated": problems[0], "kept": problems[1]},
    }
