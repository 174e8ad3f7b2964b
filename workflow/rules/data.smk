# Data: raw files (generated for the embedded default, downloaded and verified
# for the real datasets), then the catalog (clips, labels and folds of the
# dataset's protocol), then every clip decoded once into the feature store that
# training reads (ResNet18), or run once through the Conformer's frozen
# front-ends into an embeddings store.


rule generate_dataset:
    output:
        "resources/raw/{dataset}/manifest.csv",
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
        "python -m mmbalance generate --settings {params.settings:q} --out {params.out:q} --threads {threads} > {log:q} 2>&1"


# Runs where the workflow was started: cluster nodes often have no internet.
# download.json is written last, once every file is verified; a killed
# download resumes file by file (and byte by byte inside a file).
rule download:
    output:
        "resources/raw/{raw}/download.json",
    wildcard_constraints:
        raw="|".join(DOWNLOADABLE),
    params:
        source=download_source,
        out=lambda wildcards, output: Path(output[0]).parent,
    localrule: True
    log:
        "logs/download/{raw}.log",
    benchmark:
        "benchmarks/download/{raw}.tsv"
    threads: 4
    resources:
        mem_mb=2000,
        runtime=24 * 60,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance download --dataset {wildcards.raw} --source {params.source:q} --out {params.out:q} "
        "--workers {threads} > {log:q} 2>&1"


rule catalog:
    input:
        raw_marker,
    output:
        expand("results/catalog/{{dataset}}/{name}", name=CATALOG_FILES),
    params:
        options=catalog_options,
        raw=raw_dir,
        out=lambda wildcards, output: Path(output[0]).parent,
    log:
        "logs/catalog/{dataset}.log",
    benchmark:
        "benchmarks/catalog/{dataset}.tsv"
    threads: 1  # one process reads the split files: more cores would only sit idle (and can keep a SLURM job pending)
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance catalog --dataset {wildcards.dataset} --raw {params.raw:q} --options {params.options:q} "
        "--out {params.out:q} > {log:q} 2>&1"


rule preprocess:
    input:
        expand("results/catalog/{{dataset}}/{name}", name=CATALOG_FILES),
    output:
        expand("results/features/{{dataset}}/{name}", name=FEATURE_FILES),
    params:
        recipe=preprocessing_recipe,
        catalog=lambda wildcards, input: Path(input[0]).parent,
        out=features_dir,
        max_skipped=lambda wildcards: config["datasets"][wildcards.dataset]["max_skipped_fraction"],
    log:
        log="logs/preprocess/{dataset}.log",
        kept_skipped="logs/preprocess/{dataset}.kept_skipped.csv",
    benchmark:
        "benchmarks/preprocess/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=24 * 60,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance preprocess --catalog {params.catalog:q} --recipe {params.recipe:q} --out {params.out:q} "
        "--skip-log {log.kept_skipped:q} --max-skipped-fraction {params.max_skipped:q} > {log.log:q} 2>&1"


rule extract_embeddings:
    input:
        expand("results/catalog/{{dataset}}/{name}", name=CATALOG_FILES),
    output:
        expand("results/features/{{dataset}}/conformer/{name}", name=EMBEDDING_FILES),
    params:
        recipe=preprocessing_recipe,
        extractors=extraction_settings,
        catalog=lambda wildcards, input: Path(input[0]).parent,
        out=lambda wildcards, output: Path(output[0]).parent,
        device=config["train"]["device"],
    log:
        "logs/extract_embeddings/{dataset}.log",
    benchmark:
        "benchmarks/extract_embeddings/{dataset}.tsv"
    threads: config["train"]["threads"]
    resources:
        gpu=job_gpus,
        mem_mb=8000,
        runtime=24 * 60,
    conda:
        "../envs/mmbalance.yaml"
    shell:
        "python -m mmbalance extract --catalog {params.catalog:q} --recipe {params.recipe:q} "
        "--backbone {params.extractors:q} --out {params.out:q} --device {params.device:q} --threads {threads} > {log:q} 2>&1"
