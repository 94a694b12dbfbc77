"""Local copies, in the hub's shape, of the datasets the real run reads: same file layout, column names and
value types (DeepScaleR's one JSON list; AIME's parquet under data/; AMC 2023's float answers; MATH-500's
test.jsonl with an integer level and a subject; Minerva's question/answer; OlympiadBench's lists of answers).
`datasets.load_dataset` reads a local folder the way it reads the hub repository, so the same code path runs here
without internet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# The commits of config/datasets.yaml whose layout, column names and value types these copies reproduce: moving a
# pin there means checking the copy here against the new commit's files, then moving it here too.
CATALOG_REVISIONS = {
    "deepscaler": "b6ae8c60f5c1f2b594e2140b91c49c9ad0949e29",
    "aime24": "2fe88a2f1091d5048c0f36abc874fb997b3dd99a",
    "amc23": "80815d37005feb82cd7f8fbc6901d5d3eff43057",
    "math500": "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be",
    "minerva": "ee46ddc498933b1977577953250ca5c66be64f96",
    "olympiadbench": "4faaf1e6ec17d11a4218a9bf4c049ecaf954dd84",
}

AIME_PROBLEM = ("Find the number of ordered pairs of positive integers (m, n) such that m^2 n = 20^20 and "
                "both m and n are at most one million.")


def deepscaler_rows(count: int) -> list[dict]:
    rows = [{"problem": f"Let $a_{{{i}}} = {i}^2 + {3 * i}$. Compute the remainder when $a_{{{i}}}$ is divided "
                        f"by ${i % 7 + 2}$ in problem number {i}.",
             "answer": str((i * i + 3 * i) % (i % 7 + 2)),
             "solution": f"Direct computation gives $\\boxed{{{(i * i + 3 * i) % (i % 7 + 2)}}}$."}
            for i in range(count)]
    # An AIME 2024 problem with a few words changed: shares 8-grams with the benchmark, so it must go.
    rows.append({"problem": "Prove it, then " + AIME_PROBLEM.lower(), "answer": "231", "solution": ""})
    rows.append({"problem": rows[0]["problem"].replace(" ", "  "), "answer": rows[0]["answer"], "solution": ""})
    rows.append({"problem": "A problem whose answer was lost.", "answer": "", "solution": ""})
    rows.append({"problem": "Simplify " + "\\left(" * 3000 + "x" + "\\right)" * 3000 + ".", "answer": "x", "solution": ""})
    return rows


def write_hub_copies(root: Path, train_rows: int = 40) -> dict[str, dict]:
    """Write the six datasets under `root` in their hub layouts; returns data.datasets entries for them."""
    (root / "deepscaler").mkdir(parents=True)
    (root / "deepscaler" / "deepscaler.json").write_text(json.dumps(deepscaler_rows(train_rows)))
    (root / "aime24" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"id": 60, "problem": AIME_PROBLEM, "solution": "...", "answer": "231", "url": "u", "year": "2024"},
        {"id": 61, "problem": "Find the largest $x$ with $x^2 < 50$ and $x$ an integer.", "solution": "", "answer": "7",
         "url": "u", "year": "2024"},
    ]), root / "aime24" / "data" / "train-00000-of-00001.parquet")
    (root / "amc23").mkdir()
    pq.write_table(pa.Table.from_pylist([
        {"id": 0, "question": "What is $\\frac{1}{2} + \\frac{1}{4}$ times 8?", "answer": 6.0, "url": "u"},
        {"id": 1, "question": "What is half of one?", "answer": 0.5, "url": "u"},
    ]), root / "amc23" / "test-00000-of-00001.parquet")
    (root / "math500").mkdir()
    (root / "math500" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
        {"problem": "Compute $\\dbinom{5}{2}$.", "solution": "", "answer": "10", "subject": "Counting",
         "level": 1, "unique_id": "test/counting/1.json"},
        {"problem": "Find $\\sqrt{16}$.", "solution": "", "answer": "4", "subject": "Algebra", "level": 2,
         "unique_id": "test/algebra/2.json"},
    ]))
    (root / "minerva").mkdir()
    (root / "minerva" / "test.jsonl").write_text(json.dumps({"question": "Compute 2 + 2.", "answer": "4"}) + "\n")
    (root / "olympiadbench").mkdir()
    (root / "olympiadbench" / "test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [
        {"id": 1, "question": "Find all real $x$ with $x^2 = 1$.", "final_answer": ["$1$", "$-1$"]},
        {"id": 2, "question": "Find $3 \\cdot 3$.", "final_answer": ["$9$"]},
    ]))
    splits = {"deepscaler": "train", "aime24": "train"}
    columns = {"amc23": {"problem": "question"}, "math500": {"level": "level", "subject": "subject"},
               "minerva": {"problem": "question"},
               "olympiadbench": {"problem": "question", "answer": "final_answer"}}
    return {name: {"hub": str(root / name), "split": splits.get(name, "test"), "columns": columns.get(name, {})}
            for name in ("deepscaler", "aime24", "amc23", "math500", "minerva", "olympiadbench")}
