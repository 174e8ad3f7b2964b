# Tracking: create the MLflow store and experiment once, before any training
# job (concurrent first writes to a fresh SQLite store fail).


localrules:
    init_tracking,


rule init_tracking:
    output:
        TRACKING_SENTINEL,
    params:
        uri=tracking_uri(),
        experiment=config["tracking"]["experiment"],
        artifacts="results/mlflow/artifacts",
    log:
        "logs/init_tracking.log",
    benchmark:
        "benchmarks/init_tracking.tsv"
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance init-tracking --uri {params.uri:q} --experiment {params.experiment:q} "
        "--artifacts {params.artifacts:q} --sentinel {output:q} > {log:q} 2>&1"
