# Evaluation: test metrics of every run of a panel (dataset x backbone x
# fusion) in one job, since importing the metrics library costs more than the
# metrics; then the tables over all runs: mean +- std over folds, paired
# comparisons with Joint, the agreement analysis and the published numbers.


rule evaluate:
    input:
        predictions=panel_run_files("predictions.npz"),
        histories=panel_run_files("history.csv"),
        runs=panel_run_files("run.json"),
        code=PACKAGE / "evaluate.py",
    output:
        panel_metric_files(),
    log:
        "logs/evaluate/{dataset}/{backbone}/{fusion}.log",
    benchmark:
        "benchmarks/evaluate/{dataset}/{backbone}/{fusion}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance evaluate --predictions {input.predictions} --out {output} > {log} 2>&1"


rule aggregate:
    input:
        metrics=all_metrics,
        predictions=all_predictions,
        published=published_numbers(),
        code=[PACKAGE / "aggregate.py", PACKAGE / "agreement.py"],
    output:
        runs="results/tables/runs.csv",
        summary=report("results/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown="results/tables/summary.md",
        paired="results/tables/paired_vs_joint.csv",
        published=report("results/tables/published_comparison.csv", caption="../report/published_comparison.rst", category="Tables"),
        published_markdown="results/tables/published_comparison.md",
        agreement="results/tables/agreement.csv",
        agreement_summary="results/tables/agreement_summary.csv",
        metrics="results/summary.json",
    params:
        methods=GRID["methods"],
        protocol=protocol(),
        out_dir=lambda wildcards, output: Path(output.runs).parent,
    log:
        "logs/aggregate.log",
    benchmark:
        "benchmarks/aggregate.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance aggregate --metrics {input.metrics} --predictions {input.predictions} "
        "--published {input.published} --out-dir {params.out_dir} --summary-json {output.metrics} "
        "--method-order {params.methods} --protocol {params.protocol:q} > {log} 2>&1"
