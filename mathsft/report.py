"""The run report: metrics table and bars, paired comparisons with the student and teacher, response-length
histograms, training curves and the curation funnel of one run, as a single self-contained HTML page (plots are
inline SVG; nothing is fetched when it opens)."""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path

from mathsft.cost import cost_rows, unit_cost_lines
from mathsft.curate import FUNNEL_STEPS
from mathsft.io import atomic_path
from mathsft.metrics import comparison_rows, metric_columns, metrics_rows

# Steps of the curation funnel in stats.json, each a subset of the one before; "fits" (within
# train.max_length) is optional. Other keys there (problem counts, per-source funnels) are not steps.
LENGTH_COLUMNS = ("evaluated_model", "benchmark", "completion_tokens", "finish_reason")
PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
thead th { background: #f3f3f3; }
figure.plot { margin: 1em 0; } figure.plot svg { max-width: 100%; height: auto; display: block; }
figcaption, .note { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def read_train_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Training steps (records with loss) and validations (records with val_loss) of a metrics.jsonl."""
    steps, validations = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not JSON ({exc}); is the training run complete?") from exc
        if "loss" in record:
            steps.append(record)
        if "val_loss" in record:
            validations.append(record)
    return steps, validations


def read_response_lengths(paths: list[str | Path]) -> dict[tuple[str, str], list[tuple[int, bool]]]:
    """(model, benchmark) -> [(completion tokens, truncated)] from per-sample eval parquet files; only the
    small columns are read."""
    import pyarrow.parquet as pq

    lengths: dict[tuple[str, str], list[tuple[int, bool]]] = defaultdict(list)
    for path in paths:
        missing = [name for name in LENGTH_COLUMNS if name not in pq.read_schema(path).names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; is this a results/eval/{{model}}.parquet?")
        table = pq.read_table(path, columns=list(LENGTH_COLUMNS)).to_pydict()
        for model, bench, tokens, finish in zip(*(table[name] for name in LENGTH_COLUMNS)):
            lengths[(model, bench)].append((tokens, finish == "length"))
    return dict(lengths)


def funnel_steps(stats: dict) -> list[tuple[str, int]]:
    """The funnel's steps present in a stats.json, in order (extra keys are ignored)."""
    funnel = stats.get("funnel", {})
    return [(step, int(funnel[step])) for step in FUNNEL_STEPS if step in funnel]


def build_report(eval_path: str | Path, sample_paths: list[str | Path], train_paths: list[str | Path],
                 curation_path: str | Path | None, output: str | Path, cost_path: str | Path | None = None) -> None:
    """Read a run's result files and write its report to `output` (atomically)."""
    document = json.loads(Path(eval_path).read_text())
    lengths = read_response_lengths(sample_paths)
    # One run per metrics file, named by its folder: results/train/{run}/metrics.jsonl.
    runs = {Path(path).parent.name: read_train_metrics(path) for path in train_paths}
    curation = json.loads(Path(curation_path).read_text()) if curation_path else None
    cost = json.loads(Path(cost_path).read_text()) if cost_path else None
    sources = ([str(eval_path), *map(str, sample_paths), *map(str, train_paths)]
               + [str(path) for path in (curation_path, cost_path) if path])
    page = render_report(document, lengths, runs, curation, sources, cost)
    with atomic_path(output) as tmp:  # the io module's temporary-name-then-rename
        Path(tmp).write_text(page, encoding="utf-8")


def render_report(document: dict, lengths: dict[tuple[str, str], list[tuple[int, bool]]],
                  runs: dict[str, tuple[list[dict], list[dict]]], curation: dict | None, sources: list[str],
                  cost: dict | None = None) -> str:
    """The report page as HTML text; the same inputs give the same bytes."""
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(document["models"])}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>mathsft report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>mathsft report</h1>",
        f'<p class="note">eval.json schema version {_e(document.get("schema_version"))}, config hash '
        f'<code>{_e(document.get("config_hash"))}</code>; made from {", ".join(f"<code>{_e(s)}</code>" for s in sources)}.</p>',
        '<h2 id="metrics">Metrics</h2>',
        '<p class="note">Percentages. pass@1 is the mean over the n samples of each problem, averaged over problems, '
        "with its standard error over problems; pass@k is the unbiased estimator; maj@k is the majority vote of "
        "k samples (n//k disjoint groups in sample order, ties scored as a random pick among the tied answers, "
        "samples with no answer do not vote); truncated: stopped at max_tokens.</p>",
        _table(metrics_rows(document), text_columns=2, table_id="metrics-table"),
        _figure("metric-bars", metric_bars_figure(document, colors),
                "pass@1 with ± 1 standard error per model x benchmark; pass@k and maj@k at the largest k evaluated."),
        '<h2 id="comparisons">Paired comparisons</h2>',
        *_comparison_parts(document),
        '<h2 id="cost">Cost</h2>',
        *_cost_parts(cost),
        '<h2 id="lengths">Response lengths</h2>',
    ]
    if lengths:
        max_tokens = {label: model["sampling"]["max_tokens"] for label, model in document["models"].items()}
        parts.append(_figure("response-lengths", length_figure(lengths, max_tokens, colors),
                             "Completion tokens per sample; the dashed line is max_tokens (samples there were cut off)."))
    else:
        parts.append('<p class="note">No per-sample evaluation files were given.</p>')
    parts += _teacher_length_parts(curation)
    parts.append('<h2 id="training">Training</h2>')
    if not runs:
        parts.append('<p class="note">No training run in this report (the SFT model is not among eval.models).</p>')
    for run, (steps, validations) in runs.items():
        if steps:
            parts.append(_figure(f"training-{run}", training_figure(steps, validations),
                                 f"Run {run}: loss per optimizer step (token mean over the global batch; validation "
                                 "loss after each epoch) and the learning rate."))
        else:
            parts.append(f'<p class="note">Run {_e(run)} logged no training steps.</p>')
    parts.append('<h2 id="curation">Curation</h2>')
    if curation is None:
        parts.append('<p class="note">No curation statistics in this report.</p>')
    else:
        parts += _curation_parts(curation)
    parts += ['<h2 id="provenance">Provenance</h2>', _provenance_table(document),
              _table([["package", "version"]] + [[k, str(v)] for k, v in document.get("versions", {}).items()],
                     text_columns=2, table_id="versions-table"),
              "</body></html>"]
    return "\n".join(parts) + "\n"


def metric_bars_figure(document: dict, colors: dict[str, str]):
    """Grouped bars per benchmark, one bar per model: pass@1 with its error bar, then pass@K and maj@K."""
    models = list(document["models"])
    benches = sorted({b for model in document["models"].values() for b in model["benchmarks"]})
    columns = metric_columns(document)
    # pass@1, then pass@k and maj@k at the largest k evaluated.
    panels = ["pass@1"] + [max((c for c in columns if c.startswith(family)), key=lambda c: int(c.split("@")[1]))
                           for family in ("pass@", "maj@") if any(c.startswith(family) for c in columns)]
    fig = _new_figure(len(panels), width_per_panel=max(3.2, 0.9 * len(benches) * max(1, len(models)) / 2 + 1.5), height=3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    width = 0.8 / len(models)
    for ax, metric in zip(axes, panels):
        for i, label in enumerate(models):
            cells = [document["models"][label]["benchmarks"].get(bench, {}) for bench in benches]
            xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(benches))]
            values = [100 * c[metric] if metric in c else math.nan for c in cells]
            errors = [100 * c["pass@1_stderr"] if metric == "pass@1" and c else 0.0 for c in cells]
            ax.bar(xs, values, width, color=colors[label], label=label,
                   yerr=errors if metric == "pass@1" else None, capsize=3, error_kw={"elinewidth": 1})
        ax.set_title(metric + (" ± stderr" if metric == "pass@1" else ""))
        ax.set_xticks(range(len(benches)), benches, rotation=20, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small")
    return fig


def comparison_figure(comparisons: list[dict]):
    """One bar per model-vs-baseline pair in each benchmark's group: the pass@1 delta in points with its 95%
    interval as error bar, a line at zero and each bar's p beyond its interval."""
    pairs = list(dict.fromkeys((c["model"], c["baseline"]) for c in comparisons))
    benches = sorted({c["benchmark"] for c in comparisons})
    by_key = {(c["model"], c["baseline"], c["benchmark"]): c for c in comparisons}
    fig = _new_figure(1, width_per_panel=max(4.5, 0.6 * len(benches) * len(pairs) + 2.5), height=3.6)
    ax = fig.subplots()
    width = 0.8 / len(pairs)
    for i, (model, baseline) in enumerate(pairs):
        drawn = [(j, by_key[(model, baseline, bench)]) for j, bench in enumerate(benches)
                 if (model, baseline, bench) in by_key]
        for j, c in drawn:
            x, delta = j + (i - (len(pairs) - 1) / 2) * width, 100 * c["pass@1_delta"]
            low, high = (100 * bound for bound in c["ci95"])
            ax.bar(x, delta, width, color=PALETTE[i % len(PALETTE)],
                   label=f"{model} − {baseline}" if j == drawn[0][0] else None,
                   yerr=[[delta - low], [high - delta]], capsize=3, error_kw={"elinewidth": 1})
            # p beyond the interval's far end from zero, clear of the bar and its error bar.
            above = delta >= 0
            ax.annotate(f"p={c['p_value']:.2g}", (x, high if above else low), xytext=(0, 3 if above else -3),
                        textcoords="offset points", ha="center", va="bottom" if above else "top", fontsize="x-small")
    ax.axhline(0, color="#333333", linewidth=1)
    ax.set_xticks(range(len(benches)), benches, rotation=20, ha="right")
    ax.set_ylabel("pass@1 delta (points)")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def length_figure(lengths: dict[tuple[str, str], list[tuple[int, bool]]], max_tokens: dict[str, int],
                  colors: dict[str, str]):
    """One histogram panel per benchmark, a step outline per model, and max_tokens marked."""
    benches = sorted({bench for _, bench in lengths})
    models = [m for m in colors if any((m, b) in lengths for b in benches)]
    models += sorted({m for m, _ in lengths} - set(models))
    columns = min(3, len(benches))
    rows = math.ceil(len(benches) / columns)
    fig = _new_figure(columns, width_per_panel=3.6, height=2.9 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    top = max([max_tokens.get(m, 0) for m in models] + [t for samples in lengths.values() for t, _ in samples] + [1])
    bins = [top * i / 30 for i in range(31)]
    for ax, bench in zip(axes, benches):
        for model in models:
            samples = lengths.get((model, bench))
            if not samples:
                continue
            truncated = sum(cut for _, cut in samples) / len(samples)
            ax.hist([t for t, _ in samples], bins=bins, histtype="step", linewidth=1.5,
                    color=colors.get(model, "#333333"), label=f"{model} ({100 * truncated:.0f}% truncated)")
        for limit in sorted({max_tokens[m] for m in models if m in max_tokens}):
            ax.axvline(limit, color="#888888", linestyle="--", linewidth=1)
        ax.set_title(bench)
        ax.set_xlabel("completion tokens")
        ax.set_ylabel("samples")
        ax.legend(fontsize="x-small")
    for ax in axes[len(benches):]:
        ax.set_visible(False)
    return fig


def teacher_length_figure(lengths: dict):
    """One panel per source of the teacher's traces: the histogram of completion tokens from stats.json
    (teacher_lengths), max_tokens marked; the last bin holds the traces cut there."""
    sources = sorted(lengths["by_source"])
    columns = min(3, len(sources))
    rows = math.ceil(len(sources) / columns)
    fig = _new_figure(columns, width_per_panel=3.6, height=2.9 * rows)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, source in zip(axes, sources):
        entry = lengths["by_source"][source]
        ax.stairs(entry["counts"], lengths["bin_edges"], fill=True, color=PALETTE[0], alpha=0.8)
        for cap in lengths["max_tokens"]:
            ax.axvline(cap, color="#888888", linestyle="--", linewidth=1)
        ax.set_title(f"{source}: {100 * entry['cut'] / max(entry['samples'], 1):.0f}% cut at max_tokens",
                     fontsize="medium")
        ax.set_xlabel("completion tokens")
        ax.set_ylabel("traces")
    for ax in axes[len(sources):]:
        ax.set_visible(False)
    return fig


def teacher_length_rows(lengths: dict) -> list[list[str]]:
    """Per source: traces, those cut at max_tokens, problems, and the problems that lost every trace to the cap."""
    rows = [["source", "traces", "cut at max_tokens", "problems", "problems with every trace cut"]]
    for source, entry in sorted(lengths["by_source"].items()):
        share = 100 * entry["cut"] / max(entry["samples"], 1)
        rows.append([source, str(entry["samples"]), f"{entry['cut']} ({share:.0f}%)", str(entry["problems"]),
                     f"{entry['problems_all_cut']}" + (f" ({', '.join(entry['problems_all_cut_ids'][:3])}"
                                                      f"{', ...' if entry['problems_all_cut'] > 3 else ''})"
                                                      if entry["problems_all_cut"] else "")])
    return rows


def _teacher_length_parts(curation: dict | None) -> list[str]:
    """The teacher's traces: what its max_tokens cost, from the curation statistics."""
    lengths = (curation or {}).get("teacher_lengths")
    if not lengths or not lengths["by_source"]:
        return ['<p class="note">No teacher trace lengths: the curation statistics have none (made before they '
                "were counted: the next curation adds them).</p>"] if curation is not None else []
    caps = ", ".join(str(cap) for cap in lengths["max_tokens"])
    return [_figure("teacher-lengths", teacher_length_figure(lengths),
                    f"The teacher's traces per source: completion tokens; the dashed line is its max_tokens ({caps}). "
                    "A trace cut there is not finished, and curation drops it."),
            _table(teacher_length_rows(lengths), text_columns=1, table_id="teacher-lengths-table")]


def training_figure(steps: list[dict], validations: list[dict]):
    """Loss (train per step, validation per epoch) and learning rate against the optimizer step."""
    fig = _new_figure(2, width_per_panel=4.6, height=3.2)
    loss_ax, lr_ax = fig.subplots(1, 2)
    loss_ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], marker="." if len(steps) < 50 else None,
                 color=PALETTE[0], label="train")
    if validations:
        loss_ax.plot([v["step"] for v in validations], [v["val_loss"] for v in validations], marker="o",
                     linestyle="--", color=PALETTE[1], label="validation")
    loss_ax.set_title("loss")
    loss_ax.set_xlabel("step")
    loss_ax.legend(fontsize="small")
    loss_ax.grid(alpha=0.3)
    lr_ax.plot([s["step"] for s in steps], [s.get("lr", math.nan) for s in steps], color=PALETTE[2])
    lr_ax.set_title("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lr_ax.grid(alpha=0.3)
    return fig


def funnel_figure(steps: list[tuple[str, int]]):
    """Horizontal bars, first step on top, each labelled with its count and share of the first."""
    fig = _new_figure(1, width_per_panel=6.5, height=0.5 * len(steps) + 1.0)
    ax = fig.subplots()
    names = [name for name, _ in steps]
    counts = [count for _, count in steps]
    ax.barh(range(len(steps)), counts, color=PALETTE[0])
    ax.set_yticks(range(len(steps)), names)
    ax.invert_yaxis()
    first = counts[0] or 1
    for y, count in enumerate(counts):
        ax.text(count, y, f" {count} ({100 * count / first:.0f}%)", va="center", fontsize="small")
    ax.set_xlim(0, max(counts + [1]) * 1.25)
    ax.set_xlabel("trajectories")
    return fig


def _comparison_parts(document: dict) -> list[str]:
    """The comparisons' note, plot and table; a note alone where eval.json has none (schema version 2 had none)."""
    if "comparisons" not in document:
        return [f'<p class="note">eval.json schema version {_e(document.get("schema_version"))} has no paired '
                "comparisons; summarize the evaluation again (scripts/summarize_eval.py) to add them.</p>"]
    comparisons = document["comparisons"]
    if not comparisons:
        return ['<p class="note">No paired comparisons: they need the student or the teacher and another model '
                "evaluated on the same benchmark.</p>"]
    methods = document.get("comparison_methods", {})
    note = ("Each model against the student (and the teacher), paired over the problems both were evaluated on: "
            "the delta is the mean per-problem difference in pass@1, in percentage points, ± its standard error "
            f"({methods.get('pass@1_delta_stderr', '')}). 95% CI: {methods.get('ci95', '')}. "
            f"p: {methods.get('p_value', '')}.")
    return [f'<p class="note">{_e(note)}</p>',
            _figure("comparisons", comparison_figure(comparisons),
                    "pass@1 delta (model − baseline, points) per benchmark with its paired-bootstrap 95% interval; "
                    "p from the sign-flip permutation test. A bar whose interval reaches the zero line is not told "
                    "apart from its baseline."),
            _table(comparison_rows(comparisons), text_columns=3, table_id="comparisons-table")]


def _cost_parts(cost: dict | None) -> list[str]:
    """The cost ledger's table per stage, its two totals, and the cost per kept trajectory and per point."""
    if cost is None:
        return ['<p class="note">No cost ledger in this report.</p>']
    started = cost["invocation_started_at"]
    return ['<p class="note">From results/cost.json: the Snakemake benchmark file of each job, the token '
            "counts of the records and the training metrics. Wall seconds are summed over jobs; GPU seconds are wall x GPUs asked, "
            "CPU seconds those of jobs that asked for none. A job that did not rerun keeps the cost of the run that "
            "made its output; \"ran now\" counts the jobs of the invocation that began "
            f"{_e(started) if started else '(unknown)'}.</p>",
            _table(cost_rows(cost), text_columns=1, table_id="cost-table"),
            "<ul>" + "".join(f"<li>{_e(line)}</li>" for line in unit_cost_lines(cost)) + "</ul>"]


def _curation_parts(stats: dict) -> list[str]:
    steps = funnel_steps(stats)
    parts = []
    if steps:
        parts.append(_figure("curation-funnel", funnel_figure(steps),
                             "Teacher trajectories left after each curation step (share of those generated)."))
    else:
        parts.append('<p class="note">stats.json has no funnel.</p>')
    by_source = stats.get("funnel_by_source") or {}
    if by_source:
        present = [step for step, _ in steps]
        rows = [["source"] + present] + [[source] + [str(counts.get(step, "-")) for step in present]
                                         for source, counts in sorted(by_source.items())]
        parts.append(_table(rows, text_columns=1, table_id="funnel-by-source"))
    splits = stats.get("splits") or {}
    if splits:
        rows = [["split", "traces", "problems"]] + [[name, str(s.get("traces", "-")), str(s.get("problems", "-"))]
                                                     for name, s in splits.items()]
        parts.append(_table(rows, text_columns=1, table_id="splits-table"))
    return parts


def _provenance_table(document: dict) -> str:
    keys = sorted({key for model in document["models"].values() for key in model.get("sampling", {})})
    rows = [["model", "served"] + keys]
    for label, model in document["models"].items():
        rows.append([label, str(model.get("model"))] + [str(model.get("sampling", {}).get(k, "-")) for k in keys])
    return _table(rows, text_columns=len(rows[0]), table_id="models-table")


def _new_figure(panels: int, width_per_panel: float, height: float):
    from matplotlib.figure import Figure

    # No pyplot: no global figure state, no GUI backend.
    return Figure(figsize=(min(16.0, panels * width_per_panel), height), layout="constrained")


def _figure(name: str, fig, caption: str) -> str:
    return (f'<figure class="plot" id="plot-{_e(name)}">\n{_svg(fig, name)}\n'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _svg(fig, name: str) -> str:
    """The figure as an inline <svg> element. The salt, fixed per figure, makes the ids in the SVG
    reproducible (same inputs, same bytes) and distinct between the figures of one page."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"mathsft-{name}", "svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return _prefix_ids(text[text.index("<svg"):].strip(), f"{name}-")


def _prefix_ids(svg: str, prefix: str) -> str:
    """Prefix every id of an SVG, and the references to them: matplotlib numbers the elements of each figure
    from 1 (figure_1, axes_1, ...), and one page must not hold an id twice."""
    svg = re.sub(r'(\sid=")([^"]+")', rf"\g<1>{prefix}\g<2>", svg)
    svg = re.sub(r'(href="#)([^"]+")', rf"\g<1>{prefix}\g<2>", svg)
    return re.sub(r"(url\(#)([^)]+\))", rf"\g<1>{prefix}\g<2>", svg)


def _table(rows: list[list[str]], text_columns: int, table_id: str) -> str:
    head, *body = rows

    def cells(row, tag):
        return "".join(f'<{tag}{" class=text" if i < text_columns else ""}>{_e(cell)}</{tag}>' for i, cell in enumerate(row))

    return (f'<table id="{_e(table_id)}"><thead><tr>{cells(head, "th")}</tr></thead><tbody>'
            + "".join(f"<tr>{cells(row, 'td')}</tr>" for row in body) + "</tbody></table>")


def _e(value) -> str:
    return html.escape(str(value))
