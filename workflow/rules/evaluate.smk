# Evaluation: test metrics of every run of a panel (dataset x backbone x
# fusion) in one job, since importing the metrics library costs more than the
# metrics; then mean +- std over folds.


rule evaluate:
    input:
        predictions=panel_run_files("predictions.npz"),
        histories=panel_run_files("history.csv"),
        runs=panel_run_files("run.json"),
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
        all_metrics,
    output:
        runs="results/tables/runs.csv",
        summary=report("results/tables/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown="results/tables/summary.md",
        paired="results/tables/paired_vs_joint.csv",
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
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance aggregate --metrics {input} --out-dir {params.out_dir} --summary-json {output.metrics} "
        "--method-order {params.methods} --protocol {params.protocol:q} > {log} 2>&1"
