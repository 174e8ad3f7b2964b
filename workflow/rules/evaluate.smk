# Evaluation: test metrics of every run of a panel (dataset x backbone x
# fusion) in one job and one file, since importing the metrics library costs
# more than the metrics; then the tables over all runs: mean +- std over folds,
# paired comparisons with Joint, the agreement analysis, the published numbers
# and the papers' tables laid out as printed.


rule evaluate:
    input:
        predictions=panel_run_files("predictions.npz"),
        histories=panel_run_files("history.csv"),
        runs=panel_run_files("run.json"),
        code=PACKAGE / "evaluate.py",
    output:
        f"{OUT}/metrics/{{dataset}}/{{backbone}}/{{fusion}}.json",
    log:
        f"{LOGS}/evaluate/{{dataset}}/{{backbone}}/{{fusion}}.log",
    benchmark:
        f"{BENCHMARKS}/evaluate/{{dataset}}/{{backbone}}/{{fusion}}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance evaluate --predictions {input.predictions:q} --out {output:q} > {log:q} 2>&1"


rule aggregate:
    input:
        metrics=all_metrics,
        predictions=all_predictions,
        published=shipped_or("published", "published.csv"),
        specs=shipped_or("paper_specs", "paper_tables.yaml"),
        tuning=all_best(),
        code=[PACKAGE / "aggregate.py", PACKAGE / "agreement.py", PACKAGE / "papers.py"],
    output:
        runs=f"{OUT}/tables/runs.csv",
        summary=report(f"{OUT}/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown=f"{OUT}/tables/summary.md",
        paired=f"{OUT}/tables/paired_vs_joint.csv",
        published=report(f"{OUT}/tables/published_comparison.csv", caption="../report/published_comparison.rst", category="Tables"),
        published_markdown=f"{OUT}/tables/published_comparison.md",
        agreement=f"{OUT}/tables/agreement.csv",
        agreement_summary=f"{OUT}/tables/agreement_summary.csv",
        metrics=f"{OUT}/summary.json",
        papers=[f"{OUT}/tables/papers/{key}.md" for key in PAPER_TABLES],
        budget=[f"{OUT}/tables/tuning_budget.csv"] if EXPERIMENT.studies() else [],
        paper_csvs=[report(f"{OUT}/tables/papers/{key}.csv", caption="../report/paper_table.rst", category="Paper tables") for key in PAPER_TABLES],
    params:
        methods=EXPERIMENT.methods,
        variants=variant_descriptions(),
        paper_tables=PAPER_TABLES,
        protocol=protocol(),
        out_dir=lambda wildcards, output: Path(output.runs).parent,
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance aggregate --metrics {input.metrics:q} --predictions {input.predictions:q} "
        "--published {input.published:q} --paper-specs {input.specs:q} --paper-tables {params.paper_tables:q} "
        "--out-dir {params.out_dir:q} --summary-json {output.metrics:q} --method-order {params.methods:q} "
        "--variants {params.variants:q} --tuning-best {input.tuning:q} --protocol {params.protocol:q} > {log:q} 2>&1"
