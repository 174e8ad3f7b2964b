# Figures: the papers' figures, regenerated from the tables and the training
# histories (each is a `snakemake --report` entry with a caption). Changing
# analysis.dpi or the plotting code re-runs these rules only.


rule figure_tables:
    input:
        runs=f"{OUT}/tables/runs.csv",
        agreement=f"{OUT}/tables/agreement.csv",
        code=PACKAGE / "figures.py",
    output:
        report(f"{OUT}/figures/accuracy_per_method.png", caption="../report/accuracy_per_method.rst", category="Figures"),
        report(f"{OUT}/figures/ece_per_method.png", caption="../report/ece_per_method.rst", category="Figures"),
        report(f"{OUT}/figures/accuracy_per_fusion.png", caption="../report/accuracy_per_fusion.rst", category="Figures"),
        report(f"{OUT}/figures/agreement.png", caption="../report/agreement.rst", category="Figures"),
    params:
        methods=EXPERIMENT.methods,
        dpi=config["analysis"]["dpi"],
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{LOGS}/figures/tables.log",
    benchmark:
        f"{BENCHMARKS}/figures/tables.tsv"
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance figure-tables --runs {input.runs:q} --agreement {input.agreement:q} "
        "--method-order {params.methods:q} --dpi {params.dpi:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule figure_training:
    input:
        histories=panel_run_files("history.csv"),
        code=PACKAGE / "figures.py",
    output:
        report(
            f"{OUT}/figures/{{dataset}}/{{backbone}}/{{fusion}}/balance_over_training.png",
            caption="../report/balance_over_training.rst",
            category="Figures",
            subcategory="{dataset}/{backbone}/{fusion}",
        ),
        report(
            f"{OUT}/figures/{{dataset}}/{{backbone}}/{{fusion}}/unimodal_curves.png",
            caption="../report/unimodal_curves.rst",
            category="Figures",
            subcategory="{dataset}/{backbone}/{fusion}",
        ),
        report(
            f"{OUT}/figures/{{dataset}}/{{backbone}}/{{fusion}}/discrepancy_ratio.png",
            caption="../report/discrepancy_ratio.rst",
            category="Figures",
            subcategory="{dataset}/{backbone}/{fusion}",
        ),
        report(
            f"{OUT}/figures/{{dataset}}/{{backbone}}/{{fusion}}/logit_norms.png",
            caption="../report/logit_norms.rst",
            category="Figures",
            subcategory="{dataset}/{backbone}/{fusion}",
        ),
    params:
        dpi=config["analysis"]["dpi"],
        out_dir=lambda wildcards, output: Path(output[0]).parent,
    log:
        f"{LOGS}/figures/{{dataset}}/{{backbone}}/{{fusion}}/training.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{dataset}}/{{backbone}}/{{fusion}}/training.tsv"
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance figure-training --histories {input.histories:q} --dpi {params.dpi:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
