# Training: one job per grid cell. The job resumes from its checkpoint
# (results/checkpoints/..., never a declared output) if it was killed.


rule train:
    input:
        features=feature_files,
        tracking=TRACKING_SENTINEL,
        tuned=tuned_best,
        teachers=teacher_files,
    output:
        history=f"{OUT}/runs/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/{{variant}}/fold{{fold}}/history.csv",
        predictions=f"{OUT}/runs/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/{{variant}}/fold{{fold}}/predictions.npz",
        model=f"{OUT}/runs/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/{{variant}}/fold{{fold}}/model.pt",
        run=f"{OUT}/runs/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/{{variant}}/fold{{fold}}/run.json",
    params:
        settings=cell_settings,
        features=features_dir,
        out=run_dir,
        checkpoint=checkpoint_path,
        # "--tuned <best.json>" for a cell of the `tuned` variant, nothing otherwise.
        tuned=lambda wildcards, input: f"--tuned {shlex.quote(input.tuned[0])}" if input.tuned else "",
    log:
        f"{LOGS}/train/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/{{variant}}/fold{{fold}}.log",
    benchmark:
        f"{BENCHMARKS}/train/{{dataset}}/{{backbone}}/{{fusion}}/{{method}}/{{variant}}/fold{{fold}}.tsv"
    threads: config["train"]["threads"]
    resources:
        gpu=job_gpus,
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance train --features {params.features:q} --settings {params.settings:q} "
        "--out {params.out:q} --checkpoint {params.checkpoint:q} {params.tuned} --threads {threads} > {log:q} 2>&1"
