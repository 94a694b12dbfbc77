"""Curation: one DuckDB query (sql/curate.sql) from scored trajectories to the SFT train/val sets."""

from __future__ import annotations

from pathlib import Path

from mathsft.io import SCORED_SCHEMA, write_json, write_parquet

SQL_PATH = Path(__file__).with_name("sql") / "curate.sql"


def curate(files: list[str], train_path: str, val_path: str, stats_path: str, reward_threshold: float,
           max_traces_per_problem: int, val_fraction: float) -> dict:
    """Run the curate SQL over `files`, write train/val parquet and stats.json (with the SQL); returns the stats."""
    import duckdb

    if not files:
        raise ValueError("no scored shards given to curate")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"curate.val_fraction must be in [0, 1), got {val_fraction}")
    sql = SQL_PATH.read_text()
    params = {"files": list(files), "reward_threshold": reward_threshold,
              "max_traces_per_problem": max_traces_per_problem, "val_fraction": val_fraction}
    con = duckdb.connect()
    con.execute(f"CREATE TEMP TABLE curated AS {sql}", params)
    funnel = con.execute(
        """SELECT count(*) AS generated,
                  count(*) FILTER (reward >= $reward_threshold) AS correct,
                  count(*) FILTER (reward >= $reward_threshold AND finish_reason = 'stop') AS finished,
                  count(DISTINCT problem_id) AS problems
           FROM read_parquet($files)""",
        {"files": params["files"], "reward_threshold": reward_threshold},
    ).fetchall()[0]
    splits = {}
    for split, path in (("train", train_path), ("val", val_path)):
        table = con.sql("SELECT * EXCLUDE (split) FROM curated WHERE split = $split ORDER BY problem_id, sample_index",
                        params={"split": split}).to_arrow_table()
        write_parquet(table, path, SCORED_SCHEMA)
        splits[split] = {"traces": table.num_rows, "problems": len(set(table.column("problem_id").to_pylist()))}
    stats = {
        "funnel": dict(zip(("generated", "correct", "finished", "problems"), funnel))
        | {"kept": splits["train"]["traces"] + splits["val"]["traces"]},
        "splits": splits,
        "params": {k: v for k, v in params.items() if k != "files"},
        "inputs": sorted(files),
        "sql": sql,
    }
    write_json(stats, stats_path)
    return stats
