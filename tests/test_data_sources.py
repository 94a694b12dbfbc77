"""Hub and file datasets: reading through a column mapping, bad input named, normalisation counted,
decontamination per benchmark, a seeded order whose prefix is stable; then the data stage as Snakemake runs
it on local copies of the hub datasets (fetched by the real `datasets.load_dataset`)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from helpers.hubdata import AIME_PROBLEM, CATALOG_REVISIONS, write_hub_copies
from mathsft import data, sources
from mathsft.io import BENCHMARK_SCHEMA, read_parquet, write_parquet
from helpers.workflow import REPO, SNAKEMAKE, checkout, cli_process, planned_outputs, snakemake


def spec(name="set", **entry):
    return sources.DatasetSpec.from_config(name, {"path": "x.jsonl"} | entry)


def rows_of(path, **entry):
    table = sources.read_table(path)
    return list(sources.dataset_rows(spec(**entry), table, str(path)))


def test_jsonl_json_and_parquet_files_read_through_a_column_mapping(tmp_path):
    records = [{"question": "What is 1+1?", "final": 2}, {"question": "What is 2+2?", "final": 4}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "a.json").write_text(json.dumps(records))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.json", "a.parquet"):
        rows = rows_of(tmp_path / name, columns={"problem": "question", "answer": "final"})
        where = [f"{tmp_path / name}, row {n}" for n in (1, 2)]
        assert rows == [{"source": "set", "problem": "What is 1+1?", "answer": 2, "level": None, "subject": None,
                         "where": where[0]},
                        {"source": "set", "problem": "What is 2+2?", "answer": 4, "level": None, "subject": None,
                         "where": where[1]}], name


@pytest.mark.parametrize("name", ["a.jsonl", "a.json"])
def test_a_column_mixing_numbers_and_text_is_an_error_naming_file_line_and_column(tmp_path, name):
    records = [{"problem": "What is 1+1?", "answer": 2}, {"problem": "What is 1/2?", "answer": "\\frac{1}{2}"}]
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records) if name.endswith("l") else json.dumps(records))
    second = f"{path}:2" if name.endswith("l") else f"{path}, item 2"
    first = f"{path}:1" if name.endswith("l") else f"{path}, item 1"
    with pytest.raises(ValueError, match=re.escape(f"{second}: column 'answer' holds str '\\\\frac{{1}}{{2}}', but int "
                                                   f"at {first}; a column holds one type")):
        rows_of(path)


def test_answers_no_grader_can_compare_are_dropped_counted_and_named(tmp_path, caplog):
    answers = [{"a": 1}, True, float("nan"), float("inf"), [1, float("-inf")], 4]
    records = [{"problem": f"Problem {i}?", "answer": answer} for i, answer in enumerate(answers)]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist([r | {"answer": json.dumps(r["answer"])} for r in records]), path)
    rows = [r | {"answer": answer} for r, answer in zip(rows_of(path), answers)]  # as stored values of any type
    counts = data.Counts()
    with caplog.at_level(logging.WARNING, logger="mathsft.data"):
        kept = list(data.clean_problems(rows, counts, set()))
    assert [row["answer"] for row in kept] == ["$4$"] and counts.unusable_answer == 5
    assert f"{path}, row 1: answer dict {{'a': 1}} is no answer" in caplog.text
    assert f"{path}, row 3: answer float nan is no answer" in caplog.text


def test_a_column_mapping_that_names_nothing_is_an_error_naming_the_key_and_the_file(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"data\.datasets\.set\.columns\.problem: column 'problem' is not in .*a\.jsonl"
                                         r" \(its columns: question, answer\)"):
        rows_of(tmp_path / "a.jsonl")


def test_malformed_and_non_utf8_files_are_errors_naming_the_file_and_line(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"problem": "q", "answer": "1"}\n{"problem": "q2", "answer": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        sources.read_table(bad_json)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"problem": "ok", "answer": "1"}\n{"problem": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not UTF-8"):
        sources.read_table(latin1)
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(ValueError, match=r"x\.parquet: not a readable parquet file"):
        sources.read_table(not_parquet)
    one_object = tmp_path / "one.json"
    one_object.write_text(json.dumps({"problem": "q", "answer": "1"}))
    with pytest.raises(ValueError, match=r"one\.json: expected a JSON list of objects"):
        sources.read_table(one_object)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        sources.read_table(tmp_path / "missing.parquet")


def test_a_dataset_spec_needs_exactly_one_place_and_known_keys():
    with pytest.raises(ValueError, match=r"data\.datasets\.d: give exactly one of hub"):
        sources.DatasetSpec.from_config("d", {"hub": "org/x", "path": "x.jsonl"})
    with pytest.raises(ValueError, match=r"data\.datasets\.d\.columns: unknown keys \['solution'\]"):
        sources.DatasetSpec.from_config("d", {"hub": "org/x", "columns": {"solution": "s"}})
    with pytest.raises(ValueError, match="is in neither data.datasets nor config/datasets.yaml"):
        sources.resolve_specs(["nope"], {"aime24": {"hub": "x"}}, {})


def test_a_dataset_entry_with_an_unknown_key_a_wrong_type_or_format_is_an_error_naming_dataset_and_key():
    with pytest.raises(ValueError, match=r"data\.datasets\.d: unknown keys \['colums'\] \(expected hub, path, "):
        sources.DatasetSpec.from_config("d", {"path": "x.jsonl", "colums": {"problem": "q"}})
    with pytest.raises(ValueError, match=r"data\.datasets\.d\.split: 3 is not of type 'string'"):
        sources.DatasetSpec.from_config("d", {"hub": "org/x", "split": 3})
    with pytest.raises(ValueError, match=r"data\.datasets\.d\.columns\.level: 5 is not of type 'string'"):
        sources.DatasetSpec.from_config("d", {"hub": "org/x", "columns": {"level": 5}})
    with pytest.raises(ValueError, match=r"data\.datasets\.d\.path: x\.csv is not one of \.parquet, \.jsonl, \.json"):
        sources.DatasetSpec.from_config("d", {"path": "x.csv"})
    with pytest.raises(ValueError, match=r"data\.datasets\.d: expected a mapping with hub: or path:, got 'org/x'"):
        sources.DatasetSpec.from_config("d", "org/x")
    with pytest.raises(ValueError, match=r"data\.datasets\.d: give exactly one of hub"):
        sources.DatasetSpec.from_config("d", {"split": "test"})


def test_every_bad_entry_of_a_catalog_is_named_at_once():
    catalog = {"good": {"hub": "org/x"}, "both": {"hub": "org/y", "path": "y.jsonl"}, "typo": {"hub": "org/z", "revison": "a"}}
    with pytest.raises(ValueError) as error:
        sources.check_datasets(catalog)
    assert str(error.value).splitlines() == [
        "data.datasets.both: give exactly one of hub: (a dataset id) or path: (a local file)",
        "data.datasets.typo: unknown keys ['revison'] (expected hub, path, split, subset, revision, columns)"]


def test_the_shipped_catalog_follows_the_datasets_schema_that_the_config_schema_refers_to():
    catalog = sources.read_catalog(REPO / "config" / "datasets.yaml")
    assert sources.check_datasets(catalog) is catalog
    config_schema = yaml.safe_load((REPO / "config" / "config.schema.yaml").read_text())
    entry = config_schema["properties"]["data"]["properties"]["datasets"]["additionalProperties"]
    assert entry == {"$ref": "../schemas/datasets.schema.json#/$defs/dataset"}


def test_a_spec_without_split_or_columns_takes_the_defaults_the_datasets_schema_gives():
    """Snakemake fills the schema's defaults into data.datasets; a catalog entry read by hand gets DatasetSpec's.
    They must be the same values, or a dataset would read differently in and out of the workflow."""
    entry = json.loads((REPO / "schemas" / "datasets.schema.json").read_text())["$defs"]["dataset"]["properties"]
    spec = sources.DatasetSpec.from_config("bare", {"path": "bare.jsonl"})
    assert (spec.split, spec.problem_column, spec.answer_column) == (
        entry["split"]["default"], entry["columns"]["properties"]["problem"]["default"],
        entry["columns"]["properties"]["answer"]["default"])


def test_answers_of_every_stored_type_become_text_math_verify_can_read():
    assert data.answer_text(6.0) == "6" and data.answer_text(0.5) == "0.5" and data.answer_text(12) == "12"
    assert data.answer_text(["$1$", "$-1$"]) == "1, -1" and data.answer_text(["$9$"]) == "9"
    assert data.answer_text(None) is None and data.answer_text("  ") is None and data.answer_text([]) is None
    assert data.wrap_answer(data.answer_text(["$1$", "$-1$"])) == "$1, -1$"


def test_a_math500_file_keeps_each_problems_level_and_subject_through_the_catalogs_mapping(tmp_path):
    catalog = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())
    write_hub_copies(tmp_path)
    local = {"path": str(tmp_path / "math500" / "test.jsonl"), "columns": catalog["math500"]["columns"]}
    aime = {"path": str(tmp_path / "aime24" / "data" / "train-00000-of-00001.parquet")}
    specs = sources.resolve_specs(["math500", "aime24"], catalog, {"math500": local, "aime24": aime})
    benchmarks = {name: sources.dataset_rows(spec, sources.read_table(spec.path), spec.path)
                  for name, spec in specs.items()}
    _, bench_sets, _ = data.prepare_datasets({}, benchmarks, None, seed=1, ngram=8)
    write_parquet(bench_sets["math500"], tmp_path / "math500.parquet", BENCHMARK_SCHEMA)
    written = read_parquet(tmp_path / "math500.parquet", BENCHMARK_SCHEMA).to_pylist()
    # MATH-500 stores the level as an integer: it becomes text, as every benchmark's metadata is.
    assert [(row["level"], row["subject"]) for row in written] == [("1", "Counting"), ("2", "Algebra")]
    assert all(row["level"] is None and row["subject"] is None for row in bench_sets["aime24"])


def test_a_level_or_subject_mapping_that_names_nothing_is_an_error_naming_the_key(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"problem": "q", "answer": "1", "difficulty": 3}) + "\n")
    assert rows_of(tmp_path / "a.jsonl", columns={"level": "difficulty"})[0]["level"] == 3
    with pytest.raises(ValueError, match=r"data\.datasets\.set\.columns\.subject: column 'topic' is not in"):
        rows_of(tmp_path / "a.jsonl", columns={"subject": "topic"})


def test_levels_and_subjects_of_every_stored_type_become_text():
    assert data.label_text(5) == "5" and data.label_text(5.0) == "5" and data.label_text(" Level 5 ") == "Level 5"
    assert data.label_text(["Algebra", "Geometry"]) == "Algebra, Geometry"
    assert data.label_text(None) is None and data.label_text("  ") is None and data.label_text([]) is None


def _rows(problems, source="train"):
    return [{"source": source, "problem": p, "answer": a} for p, a in problems]


def test_prepare_datasets_counts_every_drop_and_names_the_contaminating_benchmark():
    train = _rows([("What is 1+1?", "2"), ("What  is 1+1?", "2"), ("No answer here.", None), ("", "3"),
                   ("x" * 900, "1"), ("Prove it, then " + AIME_PROBLEM.lower(), "231"), ("What is 3+3?", "6"),
                   ("What is 0/0?", float("nan"))])
    bench = {"aime24": _rows([(AIME_PROBLEM, "231")], "aime24"), "math500": _rows([("What is 9+9?", 18)], "math500")}
    kept, bench_sets, report = data.prepare_datasets({"train": train}, bench, None, seed=1, ngram=8, max_chars=800)
    assert {row["problem"] for row in kept} == {"What is 1+1?", "What is 3+3?"}
    dropped = report["train"]["sources"]["train"]["dropped"]
    assert dropped == {"no_problem": 1, "no_answer": 1, "unusable_answer": 1, "too_long": 1, "duplicate": 1,
                       "contaminated": {"aime24": 1}}
    assert report["train"]["contaminated_by_benchmark"] == {"aime24": 1}
    assert bench_sets["math500"][0]["answer"] == "$18$" and bench_sets["math500"][0]["source"] == "math500"


def test_raising_num_samples_only_appends_and_the_order_ignores_file_row_order():
    train = _rows([(f"Problem number {i}: compute {i} + {i}.", str(2 * i)) for i in range(50)])
    first, _, _ = data.prepare_datasets({"train": train}, {}, 20, seed=3, ngram=8)
    more, _, _ = data.prepare_datasets({"train": list(reversed(train))}, {}, 30, seed=3, ngram=8)
    assert more[:20] == first
    other_seed, _, _ = data.prepare_datasets({"train": train}, {}, 20, seed=4, ngram=8)
    assert other_seed != first
    with pytest.raises(ValueError, match="data.num_samples is 51 but the training sets hold only 50"):
        data.prepare_datasets({"train": train}, {}, 51, seed=3, ngram=8)


BENCHMARKS = ["aime24", "amc23", "math500", "minerva", "olympiadbench"]


def test_every_hub_dataset_in_the_catalog_pins_the_commit_its_local_copy_stands_for():
    catalog = yaml.safe_load((REPO / "config" / "datasets.yaml").read_text())
    hub = {name: spec for name, spec in catalog.items() if "hub" in spec}
    assert {name: spec.get("revision") for name, spec in hub.items()} == CATALOG_REVISIONS
    assert all(len(rev) == 40 and int(rev, 16) >= 0 for rev in CATALOG_REVISIONS.values())
    assert set(hub) == {"deepscaler", *BENCHMARKS}  # write_hub_copies makes one copy of each


def use_datasets_cache(top, environment) -> None:
    """The datasets cache in `top` (set through `environment`, a MonkeyPatch), kept out of the user's, offline."""
    environment.setenv("HF_HOME", str(top / "hf"))
    environment.setenv("HF_DATASETS_OFFLINE", "1")


def hub_setup(top, environment) -> tuple:
    """A working directory under `top` whose config reads local copies of the hub datasets (source: hub), with
    the datasets cache in `top` (use_datasets_cache)."""
    use_datasets_cache(top, environment)
    datasets = write_hub_copies(top / "hub")
    config = {"data": {"source": "hub", "train_sets": ["deepscaler"], "benchmarks": BENCHMARKS, "datasets": datasets,
                       "num_samples": 24, "shard_size": 8, "decontamination_ngram": 8, "max_problem_chars": 2000},
              "eval": {"models": ["student"]}}
    path = top / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    return top / "run", path, config


@pytest.fixture()
def hub_run(tmp_path, monkeypatch):
    return hub_setup(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def hub_data_stage(tmp_path_factory):
    """hub_run's data stage, planned then run once for the module (six fetches and the preparation): the plan,
    and the finished folder that hub_prepared copies."""
    top = tmp_path_factory.mktemp("hub_data_stage")
    with pytest.MonkeyPatch.context() as environment:
        workdir, configfile, config = hub_setup(top, environment)
        planned = planned_outputs(workdir, configfile, "results/data/report.json")
        _run_data_stage(workdir, configfile)
    return top, planned


@pytest.fixture()
def hub_prepared(hub_data_stage, tmp_path, monkeypatch):
    """A copy of the module's finished data stage (file times and Snakemake's records kept, so nothing in it is
    stale) with a config of its own to edit, reading the module's hub copies: what hub_run is after a run."""
    top, planned = hub_data_stage
    use_datasets_cache(top, monkeypatch)
    shutil.copytree(top / "run", tmp_path / "run", symlinks=True)
    configfile = tmp_path / "hub.yaml"
    shutil.copy2(top / "hub.yaml", configfile)
    return tmp_path / "run", configfile, yaml.safe_load(configfile.read_text()), planned


def _run_data_stage(workdir, configfile, *targets):
    result = snakemake(workdir, configfile, "results/data/report.json", *targets, timeout=600)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((workdir / "logs").rglob("*.log"))) if (workdir / "logs").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:] + logs
    return result


def test_the_data_stage_fetches_hub_datasets_and_prepares_decontaminated_shards(hub_prepared):
    workdir, configfile, config, planned = hub_prepared
    assert planned["fetch_dataset"] == {f"results/data/raw/{name}.parquet" for name in ["deepscaler"] + BENCHMARKS}
    assert planned_outputs(workdir, configfile, "results/data/report.json") == {}  # the copy is up to date
    report = json.loads((workdir / "results" / "data" / "report.json").read_text())
    dropped = report["train"]["sources"]["deepscaler"]["dropped"]
    assert dropped == {"no_problem": 0, "no_answer": 1, "unusable_answer": 0, "too_long": 1, "duplicate": 1, "contaminated": {"aime24": 1}}
    assert report["train"]["kept"] == 24 and report["train"]["usable"] == 40
    shards = sorted((workdir / "results" / "data" / "shards").glob("*.parquet"))
    assert [p.name for p in shards] == ["00000.parquet", "00001.parquet", "00002.parquet"]
    bench = {name: pq.read_table(workdir / "results" / "data" / "bench" / f"{name}.parquet").to_pylist()
             for name in BENCHMARKS}
    assert [row["answer"] for row in bench["amc23"]] == ["$6$", "$0.5$"]
    assert [row["answer"] for row in bench["olympiadbench"]] == ["$1, -1$", "$9$"]
    assert len(bench["aime24"]) == 2 and all(row["source"] == "minerva" for row in bench["minerva"])
    assert [(row["level"], row["subject"]) for row in bench["math500"]] == [("1", "Counting"), ("2", "Algebra")]
    assert all(row["level"] is None and row["subject"] is None for row in bench["aime24"])

    # Raising num_samples rewrites the data, never refetches, and keeps the existing shards' rows.
    before = {p.name: pq.read_table(p).to_pylist() for p in shards}
    config["data"]["num_samples"] = 36
    configfile.write_text(yaml.safe_dump(config))
    planned = planned_outputs(workdir, configfile, "results/data/shards/00004.parquet")
    assert set(planned) == {"prepare_data"}
    _run_data_stage(workdir, configfile, "results/data/shards/00004.parquet")
    after = {p.name: pq.read_table(p).to_pylist() for p in sorted((workdir / "results" / "data" / "shards").glob("*"))}
    assert set(after) == set(before) | {"00003.parquet", "00004.parquet"}
    assert all(after[name] == rows for name, rows in before.items())


def test_a_bad_column_mapping_fails_the_data_stage_naming_key_and_file_and_keeps_the_fetched_data(hub_prepared):
    workdir, configfile, config, _ = hub_prepared
    config["data"]["datasets"]["amc23"]["columns"] = {"problem": "prompt"}
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, configfile, "results/data/report.json", timeout=600)
    assert result.returncode != 0
    log = (workdir / "logs" / "data" / "prepare.log").read_text()
    assert "data.datasets.amc23.columns.problem: column 'prompt' is not in results/data/raw/amc23.parquet" in log
    assert (workdir / "results" / "data" / "raw" / "deepscaler.parquet").exists()


def test_a_data_datasets_entry_with_an_unknown_key_is_refused_before_any_job_naming_it(hub_run):
    workdir, configfile, config = hub_run
    config["data"]["datasets"]["amc23"]["colums"] = {"problem": "question"}
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, configfile, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "'colums' was unexpected" in output and "['data']['datasets']['amc23']" in output


def test_a_broken_catalog_entry_is_refused_when_the_dag_is_built_naming_dataset_and_key(hub_run, tmp_path):
    workdir, configfile, config = hub_run
    copy = shutil.copytree(checkout(), tmp_path / "checkout", ignore=shutil.ignore_patterns(".venv", ".cache"))
    catalog = yaml.safe_load((copy / "config" / "datasets.yaml").read_text())
    catalog["minerva"]["path"] = "minerva.jsonl"
    catalog["aime24"]["split"] = 2024
    (copy / "config" / "datasets.yaml").write_text(yaml.safe_dump(catalog))
    del config["data"]["datasets"]["minerva"], config["data"]["datasets"]["aime24"]
    configfile.write_text(yaml.safe_dump(config))
    result = cli_process([*SNAKEMAKE, "-s", str(copy / "Snakefile"), "--directory", str(workdir), "--configfile",
                          str(configfile), "-n", "results/eval.json"], cwd=tmp_path, env=dict(os.environ), timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "data.datasets.aime24.split: 2024 is not of type 'string'" in output
    assert "data.datasets.minerva: give exactly one of hub: (a dataset id) or path: (a local file)" in output


def test_a_hub_dataset_with_source_files_is_refused_before_any_job(hub_run):
    workdir, configfile, config = hub_run
    config["data"]["source"] = "files"
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, configfile, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0
    assert "data.datasets.deepscaler is a hub dataset" in result.stdout + result.stderr


def test_choosing_eval_benchmarks_outside_data_benchmarks_is_refused(hub_run):
    workdir, configfile, config = hub_run
    config["eval"]["benchmarks"] = ["aime25"]
    configfile.write_text(yaml.safe_dump(config))
    result = snakemake(workdir, configfile, "-n", "results/eval.json", timeout=300)
    assert result.returncode != 0 and "eval.benchmarks: aime25 not in data.benchmarks" in result.stdout + result.stderr


def test_local_files_need_no_fetch_and_editing_one_in_place_reruns_the_data_stage(tmp_path):
    (tmp_path / "run").mkdir()
    train = tmp_path / "run" / "train.jsonl"
    train.write_text("".join(json.dumps({"q": f"Compute {i} times {i + 1}.", "a": i * (i + 1)}) + "\n" for i in range(12)))
    bench = tmp_path / "run" / "bench.json"
    bench.write_text(json.dumps([{"problem": "Compute 100 times 101.", "answer": "10100"}]))
    config = {"data": {"source": "files", "train_sets": ["mine"], "benchmarks": ["held_out"], "num_samples": 8,
                       "shard_size": 4, "decontamination_ngram": 8,
                       "datasets": {"mine": {"path": "train.jsonl", "columns": {"problem": "q", "answer": "a"}},
                                    "held_out": {"path": "bench.json"}}},
              "eval": {"models": ["student"]}}
    configfile = tmp_path / "files.yaml"
    configfile.write_text(yaml.safe_dump(config))
    assert "fetch_dataset" not in planned_outputs(tmp_path / "run", configfile, "results/data/report.json")
    _run_data_stage(tmp_path / "run", configfile)
    rows = pq.read_table(tmp_path / "run" / "results" / "data" / "problems.parquet").to_pylist()
    assert len(rows) == 8 and all(row["source"] == "mine" for row in rows)
    assert planned_outputs(tmp_path / "run", configfile, "results/data/report.json") == {}
    with train.open("a") as handle:
        handle.write(json.dumps({"q": "Compute 7 plus 7 and then some.", "a": 14}) + "\n")
    assert set(planned_outputs(tmp_path / "run", configfile, "results/data/report.json")) == {"prepare_data"}
