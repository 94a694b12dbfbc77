rule report:
    """results/report.html: one self-contained page (plots inline) of training curves, metric bars, response
    lengths, the curation funnel and the metrics table. No params: it reruns only when its inputs change."""
    input:
        eval="results/eval.json",
        cost="results/cost.json",
        samples=ancient(expand("results/eval/{model}.parquet", model=eval_labels())),
        train=report_training_metrics(),
        curation=report_curation_stats(),
        # The report's code: editing it remakes the report (a shell rule's code trigger sees only the command).
        code=os.path.join(LIBRARY, "report.py"),
        # After every checkpoint before it: the samples' and the curated set's sums (early cutoff, common.smk).
        **after_scored_eval(),
    output:
        report("results/report.html", category="Report", labels={"file": "report.html"}),
    localrule: True
    conda:
        CONDA_ENV
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    shell:
        "python {SCRIPTS:q}/make_report.py --eval {input.eval:q} --samples {input.samples:q}"
        " --train_metrics {input.train:q} --curation {input.curation:q} --cost {input.cost:q} --output {output:q} > {log:q} 2>&1"
