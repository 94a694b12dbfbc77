"""The report: one self-contained HTML page built from a run's result files (here small synthetic ones), that
renders in a real browser (headless Chromium) with every plot drawn; and the report rule's place in the DAG."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mathsft.generate import derive_request_seed
from mathsft.io import EVAL_SCHEMA, write_parquet
from mathsft.metrics import schema_errors
from mathsft.report import funnel_steps, read_train_metrics
from helpers.workflow import REPO, cli_process, edited_config, planned_outputs

MODELS = ("student", "sft")
BENCHMARKS = ("basic_arithmetic", "chain_sum")
PLOTS = ("plot-metric-bars", "plot-comparisons", "plot-response-lengths", "plot-teacher-lengths", "plot-training-sft",
         "plot-curation-funnel")
# The teacher's trace lengths in stats.json (mathsft.curate.teacher_lengths): 30 bins over [0, 160].
TEACHER_LENGTHS = {
    "max_tokens": [160], "bin_edges": [160 * i / 30 for i in range(31)],
    "by_source": {
        "chain_sum": {"samples": 64, "cut": 4, "counts": [0] * 5 + [10, 20, 20, 10] + [0] * 20 + [4], "problems": 32,
                      "problems_all_cut": 0, "problems_all_cut_ids": []},
        "basic_arithmetic": {"samples": 64, "cut": 11, "counts": [0] * 8 + [23, 30] + [0] * 19 + [11], "problems": 32,
                             "problems_all_cut": 2, "problems_all_cut_ids": ["0a1b2c3d4e5f6071", "1a1b2c3d4e5f6071"]},
    },
}


def _eval_rows(model: str, bench: str, problems: int = 3, samples: int = 4) -> list[dict]:
    rows = []
    for p in range(problems):
        pid = f"{bench}-{p:02d}"
        for i in range(samples):
            correct = (p + i + len(model) + len(bench)) % 3 == 0
            status = "correct" if correct else ("no_answer" if (p + i) % 5 == 4 else "wrong")
            rows.append({
                "evaluated_model": model, "benchmark": bench, "problem_id": pid, "source": bench,
                "problem": f"What is {p} + {i}?", "answer": f"${p + i}$", "sample_index": i, "messages": "[]",
                "response": "...", "finish_reason": "length" if (p * samples + i) % 7 == 0 else "stop",
                "prompt_tokens": 40, "completion_tokens": 20 + 13 * ((p * 5 + i * 3 + len(model)) % 11), "model": model,
                "served_model_name": None,
                "prompt_template": "boxed_cot_v1", "api": "chat", "temperature": 0.6, "top_p": 0.95, "max_tokens": 160,
                "seed": derive_request_seed(0, pid, i), "latency_s": 1.0,
                "extracted_answer": None if status == "no_answer" else str(p + i if correct else p + i + 1),
                "reward": 1.0 if correct else 0.0, "verifier_status": status,
            })
    return rows


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    """`python scripts/NAME.py ARGS...`, its output captured (forked from the tests' zygote: helpers/workflow.py)."""
    return cli_process([sys.executable, str(REPO / "scripts" / name), *args])


def _checked_script(name: str, *args: str) -> subprocess.CompletedProcess:
    result = _script(name, *args)
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def _synthetic_run(root: Path, training: bool = True) -> dict[str, list[str]]:
    """The result files a finished run leaves (eval parquet, eval.json, training metrics, stats.json), small."""
    results = root / "results"
    samples = []
    for model in MODELS:
        path = results / "eval" / f"{model}.parquet"
        write_parquet([r for bench in BENCHMARKS for r in _eval_rows(model, bench)], path, EVAL_SCHEMA)
        samples.append(str(path))
    summary = _checked_script(
        "summarize_eval.py", "--inputs", *samples, "--output", str(results / "eval.json"), "--pass_k", "1", "2", "4",
        "--seed", "0", "--config_hash", "0123456789abcdef", "--model_id", "sft=results/models/sft")
    assert "pass@1 (%) ± stderr" in summary.stdout
    args = {"--eval": [str(results / "eval.json")], "--samples": samples}
    if training:
        metrics = results / "train" / "sft" / "metrics.jsonl"
        metrics.parent.mkdir(parents=True)
        lines = [{"step": s, "epoch": (s - 1) // 6, "loss": 1.2 / s ** 0.3, "lr": 1e-5 * min(1.0, s / 2) * (13 - s) / 12,
                  "grad_norm": 2.0, "tokens_per_s": 100.0, "elapsed_s": 5.0 * s} for s in range(1, 13)]
        lines.insert(6, {"step": 6, "epoch": 0, "val_loss": 0.9})
        lines.append({"step": 12, "epoch": 1, "val_loss": 0.7})
        metrics.write_text("".join(json.dumps(line) + "\n" for line in lines))
        stats = results / "sft" / "stats.json"
        stats.parent.mkdir(parents=True)
        # The funnel with its optional "fits" step, per-source funnels and keys the report does not know.
        stats.write_text(json.dumps({
            "funnel": {"generated": 128, "correct": 58, "finished": 57, "fits": 55, "kept": 52},
            "funnel_by_source": {"chain_sum": {"generated": 64, "correct": 40, "finished": 40, "fits": 39, "kept": 37},
                                 "basic_arithmetic": {"generated": 64, "correct": 18, "finished": 17, "fits": 16, "kept": 15}},
            "dropped": {"wrong": 70, "unfinished": 1, "too_long": 2, "over_cap": 3},
            "problems": {"generated": 64, "kept": 30}, "splits": {"train": {"traces": 46, "problems": 27},
                                                              "val": {"traces": 6, "problems": 3}},
            "teacher_lengths": TEACHER_LENGTHS, "something_new": [1, 2, 3]}))
        args |= {"--train_metrics": [str(metrics)], "--curation": [str(stats)], "--cost": [_cost_ledger(root)]}
    return args


def _cost_ledger(root: Path) -> str:
    """results/cost.json written by scripts/write_cost.py from two benchmark files (Snakemake's columns)."""
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for name, row in (("teacher", "120.5\t0:02:00\t8000.0\t1\t1\t1\t0\t0\t150\t200.25"),
                      ("train", "60.0\t0:01:00\t3000.0\t1\t1\t1\t0\t0\t180\t100.0")):
        (root / "benchmarks").mkdir(exist_ok=True)
        (root / "benchmarks" / f"{name}.tsv").write_text(header + row + "\n")
    output = root / "results" / "cost.json"
    _checked_script("write_cost.py", "--job", f"teacher:teacher 00000:0:{root}/benchmarks/teacher.tsv",
                    f"train:train sft:0:{root}/benchmarks/train.tsv",
                    "--train_metrics", str(root / "results" / "train" / "sft" / "metrics.jsonl"),
                    "--curate_stats", str(root / "results" / "sft" / "stats.json"),
                    "--eval_json", str(root / "results" / "eval.json"),
                    "--invocation_start_file", str(root / "no-start-file"), "--output", str(output))
    return str(output)


def _make_report(args: dict[str, list[str]], output: Path) -> subprocess.CompletedProcess:
    return _script("make_report.py", "--output", str(output), *(word for option, values in args.items()
                                                                 for word in (option, *values)))


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    result = _make_report(_synthetic_run(root), root / "results" / "report.html")
    assert result.returncode == 0, result.stderr
    return root / "results" / "report.html"


def test_report_is_one_page_with_every_plot_inline_and_nothing_to_fetch(report):
    page = report.read_text()
    for plot in PLOTS:
        figure = re.search(rf'<figure class="plot" id="{plot}">\s*<svg.*?</svg>', page, re.S)
        assert figure, f"{plot} is missing or has no inline SVG"
    assert "<script" not in page and "<link" not in page and "<img" not in page
    # Links to the SVG namespaces are names, not fetched; nothing else may point outside the page.
    outside = [m for m in re.findall(r'(?:src|href)="([^"#][^"]*)"', page)]
    assert outside == []
    ids = re.findall(r'\sid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "an id is used twice (the figures' SVG ids must not clash)"
    references = set(re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert references and references <= set(ids)
    assert 'id="metrics-table"' in page and "maj@4" in page and "pass@4" in page
    assert 'id="funnel-by-source"' in page and "something_new" not in page
    assert 'id="comparisons-table"' in page and "sign-flip permutation test" in page


def test_the_teacher_lengths_show_what_its_max_tokens_cost_per_source(report):
    page = report.read_text()
    assert "basic_arithmetic: 17% cut at max_tokens" in page and "chain_sum: 6% cut at max_tokens" in page
    table = re.search(r'<table id="teacher-lengths-table">.*?</table>', page, re.S).group(0)
    assert "<td>11 (17%)</td><td>32</td><td>2 (0a1b2c3d4e5f6071, 1a1b2c3d4e5f6071)</td>" in table
    assert "<td>4 (6%)</td><td>32</td><td>0</td>" in table


def test_the_same_inputs_make_the_same_report_bytes(report, tmp_path):
    args = {"--eval": [str(report.parent / "eval.json")],
            "--samples": [str(report.parent / "eval" / f"{m}.parquet") for m in MODELS],
            "--train_metrics": [str(report.parent / "train" / "sft" / "metrics.jsonl")],
            "--curation": [str(report.parent / "sft" / "stats.json")],
            "--cost": [str(report.parent / "cost.json")]}
    again = tmp_path / "again.html"
    assert _make_report(args, again).returncode == 0
    assert again.read_bytes() == report.read_bytes()


def test_a_report_without_training_says_so_and_still_has_its_evaluation_plots(tmp_path):
    result = _make_report(_synthetic_run(tmp_path, training=False), tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert 'id="plot-metric-bars"' in page and 'id="plot-response-lengths"' in page
    assert "No training run in this report" in page and "No curation statistics" in page


def test_the_comparisons_table_shows_each_model_against_the_student_per_benchmark(report):
    document = json.loads((report.parent / "eval.json").read_text())
    page = report.read_text()
    table = re.search(r'<table id="comparisons-table">.*?</table>', page, re.S).group(0)
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", table)[1:]]
    assert [row[:4] for row in rows] == [["sft", "student", bench, "3"] for bench in BENCHMARKS]
    for row, comparison in zip(rows, document["comparisons"]):
        assert row[6].startswith(f"{100 * comparison['pass@1_delta']:+.1f} ± ")
        assert row[8] == f"{comparison['p_value']:.3g}"


def test_an_eval_json_of_schema_version_2_renders_without_comparisons(report, tmp_path):
    document = json.loads((report.parent / "eval.json").read_text())
    old = {key: value for key, value in document.items() if key not in ("comparisons", "comparison_methods")}
    (tmp_path / "eval.json").write_text(json.dumps(old | {"schema_version": 2}))
    result = _make_report({"--eval": [str(tmp_path / "eval.json")]}, tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert 'id="plot-metric-bars"' in page and 'id="plot-comparisons"' not in page
    assert "schema version 2 has no paired comparisons" in page


def test_a_report_of_one_model_says_there_is_nothing_to_compare(tmp_path):
    document = _synthetic_eval_document(tmp_path, models=("student",))
    result = _make_report({"--eval": [str(document)]}, tmp_path / "report.html")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report.html").read_text()
    assert "No paired comparisons" in page and 'id="plot-comparisons"' not in page


def _synthetic_eval_document(root: Path, models: tuple[str, ...]) -> Path:
    """results/eval.json of the synthetic rows of `models`, written by summarize_eval.py."""
    samples = []
    for model in models:
        path = root / "eval" / f"{model}.parquet"
        write_parquet([r for bench in BENCHMARKS for r in _eval_rows(model, bench)], path, EVAL_SCHEMA)
        samples.append(str(path))
    _checked_script("summarize_eval.py", "--inputs", *samples, "--output", str(root / "eval.json"), "--seed", "0")
    return root / "eval.json"


def test_an_unreadable_metrics_file_fails_naming_the_file(tmp_path):
    args = _synthetic_run(tmp_path)
    Path(args["--train_metrics"][0]).write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
    result = _make_report(args, tmp_path / "report.html")
    assert result.returncode != 0
    assert "metrics.jsonl: line 2 is not JSON" in result.stderr
    assert not (tmp_path / "report.html").exists()


def test_funnel_steps_are_read_in_order_and_other_keys_ignored():
    old_style = {"funnel": {"generated": 16, "correct": 3, "finished": 2, "problems": 8, "kept": 2}}
    assert funnel_steps(old_style) == [("generated", 16), ("correct", 3), ("finished", 2), ("kept", 2)]
    new_style = {"funnel": {"kept": 5, "fits": 6, "finished": 7, "correct": 8, "generated": 9}, "funnel_by_source": {}}
    assert [step for step, _ in funnel_steps(new_style)] == ["generated", "correct", "finished", "fits", "kept"]
    assert funnel_steps({}) == []


def test_training_metrics_split_into_steps_and_validations(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0, "lr": 0.1}\n\n{"step": 1, "val_loss": 1.5}\n')
    assert read_train_metrics(path) == ([{"step": 1, "loss": 2.0, "lr": 0.1}], [{"step": 1, "val_loss": 1.5}])


def test_the_cost_table_shows_each_stage_the_totals_and_the_cost_per_kept_trajectory(report):
    page = report.read_text()
    table = re.search(r'<table id="cost-table">(.*?)</table>', page, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    cells = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in rows]
    assert [row[0] for row in cells] == ["stage", "teacher", "train", "total (what is here)", "this invocation"]
    assert cells[1][:5] == ["teacher", "1", "120.5", "0", "200.2"]
    assert cells[3][:5] == ["total (what is here)", "2", "180.5", "0", "300.2"]
    assert cells[4][:2] == ["this invocation", "0"]  # no start file: nothing is counted as this invocation's
    assert "per kept trajectory (52 kept; teacher): 2.317 wall s" in page


def test_the_synthetic_eval_json_follows_its_schema(report):
    assert schema_errors(json.loads((report.parent / "eval.json").read_text())) == []


# In the browser: every plot laid out with a size and drawn marks, no broken image, no request for anything.
RENDER_CHECK = """<script>
window.addEventListener("load", () => {
  const drawn = svg => [...svg.querySelectorAll("path, rect, use, text")]
    .filter(e => { const b = e.getBoundingClientRect(); return b.width > 0 || b.height > 0; }).length;
  const figures = [...document.querySelectorAll("figure.plot")].map(f => {
    const svg = f.querySelector("svg");
    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return {id: f.id, width: box.width, height: box.height, drawn: svg ? drawn(svg) : 0};
  });
  const images = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 60));
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify({title: document.title, figures, broken_images: images,
    requests: performance.getEntriesByType("resource").map(r => r.name), tables: document.querySelectorAll("table").length});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    """Debian's headless Chromium; missing, the test fails on CI and is skipped elsewhere."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    reason = "chromium is not installed (as root: bash tests/system_packages.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser checks")
    pytest.skip(reason)


def render_in_chromium(page: Path, tmp_path: Path) -> dict:
    """Open a copy of `page`, with RENDER_CHECK appended, in headless Chromium; the check's results."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("</body>", RENDER_CHECK + "</body>"))
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1280,900", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, re.S)
    assert match, f"the page's check did not run in chromium (rc {result.returncode}):\n{result.stderr[-3000:]}"
    import html

    return json.loads(html.unescape(match.group(1)))


def test_report_renders_in_headless_chromium_with_every_plot_drawn(report, tmp_path):
    seen = render_in_chromium(report, tmp_path)
    assert seen["title"] == "mathsft report"
    assert [f["id"] for f in seen["figures"]] == list(PLOTS)
    for figure in seen["figures"]:
        assert figure["width"] > 200 and figure["height"] > 100, figure
        assert figure["drawn"] > 20, figure  # axes, ticks, bars or lines, labels
    assert seen["broken_images"] == [] and seen["requests"] == []
    assert seen["tables"] >= 5  # metrics, comparisons, per-source funnel, splits, provenance (+ versions)


def test_report_rule_builds_on_evaluation_and_on_training_only_when_the_sft_model_is_evaluated(tmp_path):
    """Dry runs in an empty directory: what results/report.html needs."""
    config = REPO / "tests" / "configs" / "tiny.yaml"
    planned = planned_outputs(tmp_path, config, target="results/report.html")
    assert planned["report"] == {"results/report.html"}
    assert {"train", "curate", "eval_summary", "score_eval"} <= set(planned)
    student_only = planned_outputs(tmp_path, edited_config(config, tmp_path / "c.yaml", **{"eval.models": ["student"]}),
                                   target="results/report.html")
    assert "report" in student_only and "eval_summary" in student_only
    assert not {"train", "curate", "teacher"} & set(student_only)
