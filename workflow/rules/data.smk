# Data: write the generated default dataset, then decode every clip once into
# the feature store that training reads (ResNet18), or run the Conformer's
# frozen front-ends once per clip into an embeddings store.


rule generate_dataset:
    output:
        manifest="resources/raw/{dataset}/manifest.csv",
        folds="resources/raw/{dataset}/data_splits.json",
    wildcard_constraints:
        dataset="synthetic_[a-z0-9_]+",
    params:
        settings=generator_settings,
        out=raw_dir,
    log:
        "logs/generate_dataset/{dataset}.log",
    benchmark:
        "benchmarks/generate_dataset/{dataset}.tsv"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance generate --settings {params.settings:q} --out {params.out} --threads {threads} > {log} 2>&1"


rule preprocess:
    input:
        manifest="resources/raw/{dataset}/manifest.csv",
        folds="resources/raw/{dataset}/data_splits.json",
    output:
        expand("results/features/{{dataset}}/{name}", name=FEATURE_FILES),
    params:
        recipe=preprocessing_recipe,
        raw=raw_dir,
        out=features_dir,
    log:
        "logs/preprocess/{dataset}.log",
    benchmark:
        "benchmarks/preprocess/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance preprocess --raw {params.raw} --folds {input.folds} --recipe {params.recipe:q} --out {params.out} > {log} 2>&1"


rule extract_embeddings:
    input:
        manifest="resources/raw/{dataset}/manifest.csv",
        folds="resources/raw/{dataset}/data_splits.json",
    output:
        expand("results/features/{{dataset}}/conformer/{name}", name=EMBEDDING_FILES),
    params:
        recipe=preprocessing_recipe,
        extractors=extraction_settings,
        raw=raw_dir,
        out="results/features/{dataset}/conformer",
        device=config["train"]["device"],
    log:
        "logs/extract_embeddings/{dataset}.log",
    benchmark:
        "benchmarks/extract_embeddings/{dataset}.tsv"
    threads: config["train"]["threads"]
    resources:
        gpu=job_gpus,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance extract --raw {params.raw} --folds {input.folds} --recipe {params.recipe:q} "
        "--backbone {params.extractors:q} --out {params.out} --device {params.device} --threads {threads} > {log} 2>&1"
