# Figures: the papers' figures, regenerated from the results (each is a
# `snakemake --report` entry with a caption).


rule figure_accuracy:
    input:
        runs="results/tables/runs.csv",
    output:
        report("results/figures/accuracy_per_method.png", caption="../report/accuracy_per_method.rst", category="Figures"),
    params:
        methods=GRID["methods"],
    log:
        "logs/figures/accuracy_per_method.log",
    benchmark:
        "benchmarks/figures/accuracy_per_method.tsv"
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance figure-accuracy --runs {input.runs} --method-order {params.methods} --out {output} > {log} 2>&1"


rule figure_balance:
    input:
        panel_histories,
    output:
        report(
            "results/figures/{dataset}/{backbone}/{fusion}/balance_over_training.png",
            caption="../report/balance_over_training.rst",
            category="Figures",
        ),
    log:
        "logs/figures/{dataset}/{backbone}/{fusion}/balance_over_training.log",
    benchmark:
        "benchmarks/figures/{dataset}/{backbone}/{fusion}/balance_over_training.tsv"
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance figure-balance --histories {input} --out {output} > {log} 2>&1"
