# Tuning: an equal-budget study on validation per (dataset, backbone, fusion, method)
# of the grid's `tuned` cells (mmbalance.tuning). Each trial is a job, so trials
# run in parallel under --resources gpu=N or on SLURM; `tune_best` writes the
# best settings, which the `tuned` cells' training jobs read.


rule tune_trial:
    input:
        features=feature_files,
        tracking=TRACKING_SENTINEL,
        teachers=trial_teacher_files,
    output:
        f"{OUT}/tuning/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/trial{{job}}.json",
    params:
        settings=lambda wildcards: EXPERIMENT.trial_settings(wildcards.dataset, wildcards.backbone, wildcards.fusion, wildcards.method).to_json(),
        study=study_spec,
        study_dir=lambda wildcards, output: Path(output[0]).parent,
        features=features_dir,
    log:
        f"{LOGS}/tune_trial/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/trial{{job}}.log",
    benchmark:
        f"{BENCHMARKS}/tune_trial/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/trial{{job}}.tsv"
    threads: config["train"]["threads"]
    resources:
        gpu=job_gpus,
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance tune-trial --features {params.features:q} --settings {params.settings:q} --study {params.study:q} "
        "--study-dir {params.study_dir:q} --job {wildcards.job} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule tune_best:
    input:
        trials=study_trials,
        code=PACKAGE / "tuning.py",
    output:
        best=f"{OUT}/tuning/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/best.json",
        trials=f"{OUT}/tuning/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/trials.csv",
        history=report(
            f"{OUT}/tuning/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/history.png",
            caption="../report/tuning_history.rst",
            category="Tuning",
            subcategory="{dataset}/{backbone}/{fusion}/{method}",
        ),
    params:
        study=study_spec,
        tuning=json.dumps(config["tuning"], sort_keys=True),
        tracking=json.dumps(EXPERIMENT.tracking, sort_keys=True),
        out_dir=lambda wildcards, output: Path(output.best).parent,
    log:
        f"{LOGS}/tune_best/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/tune_best/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance tune-best --trials {input.trials:q} --study {params.study:q} --tuning {params.tuning:q} "
        "--tracking {params.tracking:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"
