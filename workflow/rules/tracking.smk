# Tracking: create the MLflow store and experiment once, before any training
# job (concurrent first writes to a fresh SQLite store fail).
#
# With tracking.server.enabled (a cluster: docs/guides/slurm.md) this local rule
# first starts, or reuses, an MLflow server on the submit host in front of the
# same store, and jobs log through it. Its sentinel is then temporary: removed
# once every job that logs has run, so the next run that trains anything checks
# the server again.


localrules:
    init_tracking,


rule init_tracking:
    output:
        temp(TRACKING_SENTINEL) if config["tracking"]["server"]["enabled"] else TRACKING_SENTINEL,
    params:
        uri=tracking_uri(),
        experiment=config["tracking"]["experiment"],
        artifacts="results/mlflow/artifacts",
        host=config["tracking"]["server"]["host"],
        port=config["tracking"]["server"]["port"],
    log:
        "logs/init_tracking.log",
    benchmark:
        "benchmarks/init_tracking.tsv"
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance init-tracking --uri {params.uri:q} --experiment {params.experiment:q} "
        "--artifacts {params.artifacts:q} --sentinel {output:q} --server-host={params.host:q} --server-port {params.port} "
        "--server-log logs/mlflow-server.log > {log:q} 2>&1"
