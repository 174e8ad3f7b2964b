"""`python -m mmbalance <command>`: the one entry point every workflow rule calls.

Settings arrive as JSON strings (the rule's resolved `params:`), so the command
line of a job says exactly what it ran with.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mmbalance.tracking import ARTIFACTS as DEFAULT_ARTIFACTS
from mmbalance.tracking import SERVER_LOG as DEFAULT_SERVER_LOG
from mmbalance.tracking import SERVER_STORE as DEFAULT_SERVER_STORE


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text[:200]}") from error


def cmd_generate(args) -> None:
    from mmbalance.data import synthetic

    names = synthetic.generate(args.out, args.settings, workers=args.threads)
    logging.info("wrote %d clips to %s", len(names), args.out)


def cmd_download(args) -> None:
    from mmbalance.data import registry
    from mmbalance.io import write_text_atomic

    record = registry.module(args.dataset).download(args.out, args.source, workers=args.workers)
    # Written last: its presence means every file was fetched and verified.
    write_text_atomic(args.out / "download.json", json.dumps({"dataset": args.dataset, **record}, indent=1))
    logging.info("%s downloaded and verified into %s", args.dataset, args.out)


def cmd_catalog(args) -> None:
    from mmbalance.data import registry

    entry = registry.entry(args.dataset)
    catalog = registry.module(args.dataset).build_catalog(args.raw, entry.protocol, args.options)
    catalog.dataset = args.dataset
    catalog.write(args.out)
    for fold, splits in sorted(catalog.folds.items()):
        logging.info("fold %d: %s", fold, ", ".join(f"{s} {len(m)}" for s, m in splits.items()))


def cmd_preprocess(args) -> None:
    from mmbalance.data.store import features

    index = features.preprocess(args.catalog, args.out, args.recipe, args.skip_log, args.max_skipped_fraction)
    skipped = index[index["skipped"]]
    logging.info("feature store %s: %d clips, %d skipped", args.out, len(index), len(skipped))
    for _, row in skipped.iterrows():
        logging.info("skipped %s (%s): %s", row["clip"], row["skip_kind"], row["reason"])


def cmd_extract(args) -> None:
    import torch

    from mmbalance.data.store import embeddings
    from mmbalance.devices import training_device

    torch.set_num_threads(args.threads)
    with training_device(args.device) as lease:
        logging.info("device: %s", lease.describe())
        index = embeddings.extract(args.catalog, args.out, args.recipe, args.backbone, lease.device)
    logging.info("embeddings store %s: %d clips, %d skipped", args.out, len(index), int(index["skipped"].sum()))


def cmd_init_tracking(args) -> None:
    from mmbalance.tracking import SERVER_SCHEME, init_store, start_server

    if args.uri.startswith(SERVER_SCHEME):  # tracking.server.enabled: start or reuse the server first
        start_server(Path(args.uri.removeprefix(SERVER_SCHEME)), args.server_store, args.artifacts, args.server_host,
                     args.server_port, args.server_log)
    experiment_id = init_store(args.uri, args.experiment, args.artifacts, args.sentinel)
    logging.info("tracking store %s ready, experiment %r has id %s", args.uri, args.experiment, experiment_id)


def cmd_tracking_server(args) -> None:
    """Start, stop or show the workflow's MLflow server (config tracking.server) by hand."""
    from mmbalance.config import SERVER_TRACKING_URI, Experiment
    from mmbalance.tracking import SERVER_SCHEME, server_answers, start_server, stop_server

    record = Path(SERVER_TRACKING_URI.removeprefix(SERVER_SCHEME))
    if args.action == "stop":
        print("stopped" if stop_server(record) else f"no running server recorded in {record}")
        return
    if args.action == "status":
        info = json.loads(record.read_text()) if record.exists() else None
        state = "answers" if info and server_answers(info["uri"]) else "not running"
        print(f"{info['uri'] if info else '(no record ' + str(record) + ')'}: {state}")
        return
    server = Experiment.from_files(*args.configfile).config["tracking"]["server"]
    info = start_server(record, DEFAULT_SERVER_STORE, DEFAULT_ARTIFACTS, server["host"], server["port"], DEFAULT_SERVER_LOG)
    print(info["uri"])


def cmd_slurm_check(args) -> None:
    """What the SLURM profile and this config will ask of the cluster, checked before submitting."""
    from mmbalance.config import ConfigError, Experiment
    from mmbalance.slurm import check

    try:
        experiment = Experiment.from_files(*args.configfile)
    except ConfigError as error:
        raise SystemExit(f"mmbalance slurm-check: {error}") from None
    problems = check(experiment.config, args.profile, args.partition, print)
    if problems:
        raise SystemExit(f"mmbalance slurm-check: {problems} problem(s), see above")


def cmd_train(args) -> None:
    import torch

    from mmbalance.train import train

    torch.set_num_threads(args.threads)
    settings = args.settings
    if args.tuned:  # a `tuned` cell: its study's best values over its settings
        from mmbalance.tuning import apply_overrides, read_best

        best = read_best(args.tuned)
        logging.info("tuned settings from %s (trial %d of %s): %s", args.tuned, best["best_trial"], best["study"], best["values"])
        settings = apply_overrides(settings, best["overrides"])
    summary = train(args.features, settings, args.out, args.checkpoint)
    logging.info("done: %s", summary)


def cmd_tune_trial(args) -> None:
    import torch

    from mmbalance.tuning import StudySpec, run_trial

    torch.set_num_threads(args.threads)
    record = run_trial(args.features, args.settings, StudySpec.from_dict(args.study), args.study_dir, args.job, args.out)
    logging.info("trial record: %s", record)


def cmd_tune_best(args) -> None:
    from mmbalance.io import read_json
    from mmbalance.tuning import StudySpec, write_best

    records = [read_json(path) for path in args.trials]
    best = write_best(records, StudySpec.from_dict(args.study), args.tuning, args.out_dir, args.tracking)
    logging.info("best of %s: trial %d, validation accuracy %.4f, %s", best["study"], best["best_trial"], best["best_val_acc"], best["values"])


def cmd_evaluate(args) -> None:
    from mmbalance.evaluate import write_metrics

    results = write_metrics(args.predictions, args.out)
    logging.info("%d runs evaluated into %s", len(results), args.out)


def cmd_aggregate(args) -> None:
    from mmbalance.aggregate import write_tables

    variants = dict(item.split("=", 1) for item in args.variants)
    write_tables(args.metrics, args.out_dir, args.method_order, args.protocol, args.summary_json,
                 published=args.published, prediction_paths=args.predictions, variants=variants,
                 paper_specs=args.paper_specs, paper_tables=[key for key in args.paper_tables if key],
                 tuning_best=[path for path in args.tuning_best if str(path)])


def cmd_figure_tables(args) -> None:
    """The figures drawn from the tables: MLB Figs. 3, 4, 5 and 6."""
    import pandas as pd

    from mmbalance import figures

    from mmbalance.aggregate import with_labels

    figures.DPI = args.dpi
    # A variant other than the default is drawn as its own bar, labelled <method>/<variant>.
    runs = with_labels(pd.read_csv(args.runs))
    figures.plot_accuracy_per_method(runs, args.out_dir / "accuracy_per_method.png", args.method_order)
    figures.plot_ece_per_method(runs, args.out_dir / "ece_per_method.png", args.method_order)
    figures.plot_accuracy_per_fusion(runs, args.out_dir / "accuracy_per_fusion.png", args.method_order)
    figures.plot_agreement(with_labels(pd.read_csv(args.agreement)), args.out_dir / "agreement.png", args.method_order)


def cmd_figure_training(args) -> None:
    """The figures drawn from one panel's training histories."""
    from mmbalance import figures

    figures.DPI = args.dpi
    histories = figures.read_histories(args.histories)
    first_fold = {method: folds[0] for method, folds in histories.items()}
    figures.plot_balance_over_training(first_fold, args.out_dir / "balance_over_training.png")
    figures.plot_unimodal_curves(histories, args.out_dir / "unimodal_curves.png")
    figures.plot_discrepancy_ratio(histories, args.out_dir / "discrepancy_ratio.png")
    figures.plot_logit_norms(histories, args.out_dir / "logit_norms.png")


def cmd_settings(args) -> None:
    """Resolve configs as the workflow does; print the grid's cells, or one cell's settings."""
    from mmbalance.config import ConfigError, Experiment

    try:
        experiment = Experiment.from_files(*args.configfile)
        if args.cell is None:
            for cell in experiment.cells:
                print(cell.path)
            return
        parts = args.cell.strip("/").split("/")
        if len(parts) != 6 or not parts[5].startswith("fold"):
            raise ConfigError(f"--cell {args.cell!r}: expected <dataset>/<backbone>/<fusion>/<method>/<variant>/fold<k>")
        print(json.dumps(experiment.settings(experiment.cell(*parts[:5], parts[5].removeprefix("fold"))).as_dict(), indent=2, sort_keys=True))
    except ConfigError as error:
        raise SystemExit(f"mmbalance settings: {error}") from None


def cmd_benchmark(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    if args.startup:
        from mmbalance.bench_pipeline import startup

        startup()
        return
    if args.pipeline:
        from mmbalance.bench_pipeline import run

        run(args.clips, args.batch_size or 64, args.device, args.steps, args.rounds, args.threads)
        return
    from mmbalance.bench import run

    run(args.backbones, args.fusions, args.batch_size, args.device, args.steps, args.threads, args.extraction)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmbalance", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("generate", help="write the embedded default dataset (CREMA-D format)")
    p.add_argument("--settings", type=_json, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_generate)

    p = commands.add_parser("download", help="fetch, verify and extract a real dataset (resumes)")
    p.add_argument("--dataset", required=True, help="a key of mmbalance.data.registry.DATASETS")
    p.add_argument("--source", type=_json, default={}, help="overrides of the module's URL lists (datasets.<key>.source)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", type=int, default=4, help="parallel file downloads")
    p.set_defaults(func=cmd_download)

    p = commands.add_parser("catalog", help="read a dataset's split files into the catalog (clips, labels, folds)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw", type=Path, required=True)
    p.add_argument("--options", type=_json, default={}, help="folds, val_fraction, seed, and the dataset's own options")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_catalog)

    p = commands.add_parser("preprocess", help="decode media once into the feature store")
    p.add_argument("--catalog", type=Path, required=True)
    p.add_argument("--recipe", type=_json, required=True, help="a resolved recipe (mmbalance.data.recipes)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skip-log", type=Path, help="also write the kept/skipped table here")
    p.add_argument("--max-skipped-fraction", type=float, default=1.0)
    p.set_defaults(func=cmd_preprocess)

    p = commands.add_parser("extract", help="run the Conformer backbone's frozen front-ends once per clip")
    p.add_argument("--catalog", type=Path, required=True)
    p.add_argument("--recipe", type=_json, required=True)
    p.add_argument("--backbone", type=_json, required=True, help="backbones.conformer settings (audio, video)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_extract)

    p = commands.add_parser("init-tracking", help="create the MLflow store and experiment")
    p.add_argument("--uri", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    p.add_argument("--sentinel", type=Path, required=True)
    p.add_argument("--server-host", default="", help="tracking.server.host (mlflow-server: URIs only)")
    p.add_argument("--server-port", type=int, default=5000, help="tracking.server.port")
    p.add_argument("--server-store", default=DEFAULT_SERVER_STORE, help="the store the server writes")
    p.add_argument("--server-log", type=Path, default=DEFAULT_SERVER_LOG)
    p.set_defaults(func=cmd_init_tracking)

    p = commands.add_parser("tracking-server", help="start, stop or show the workflow's MLflow server (tracking.server)")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--configfile", type=Path, nargs="+", default=[Path("config/config.yaml")])
    p.set_defaults(func=cmd_tracking_server)

    p = commands.add_parser("slurm-check", help="check a config and profiles/slurm against the cluster before submitting")
    p.add_argument("--configfile", type=Path, nargs="+", default=[Path("config/config.yaml")],
                   help="configs merged in order, as snakemake's (the default config first)")
    p.add_argument("--profile", type=Path, default=Path("profiles/slurm/profile.yaml"))
    p.add_argument("--partition", default=None, help="default: the profile's slurm_partition, else the cluster's default")
    p.set_defaults(func=cmd_slurm_check)

    p = commands.add_parser("train", help="train one grid cell (resumes from its checkpoint)")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--settings", type=_json, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tuned", type=lambda text: Path(text) if text else None, default=None,
                   help="best.json of the cell's tuning study (cells of the `tuned` variant)")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("tune-trial", help="one trial of a tuning study: ask, train on train/val, tell")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--settings", type=_json, required=True, help="the study's base cell settings (mmbalance.config.Experiment.trial_settings)")
    p.add_argument("--study", type=_json, required=True, help="name, trials, sampler, seed, pruner, space")
    p.add_argument("--study-dir", type=Path, required=True)
    p.add_argument("--job", type=int, required=True, help="the trial job's index (0 .. trials-1)")
    p.add_argument("--out", type=Path, required=True, help="the trial's record (JSON)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=cmd_tune_trial)

    p = commands.add_parser("tune-best", help="a study's best trial: best.json, trials.csv, history.png")
    p.add_argument("--trials", type=Path, nargs="+", required=True)
    p.add_argument("--study", type=_json, required=True)
    p.add_argument("--tuning", type=_json, required=True, help="the config's tuning block")
    p.add_argument("--tracking", type=_json, default=None)
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(func=cmd_tune_best)

    p = commands.add_parser("evaluate", help="test metrics of runs (one process for many: imports are slow)")
    p.add_argument("--predictions", type=Path, nargs="+", required=True, help="predictions.npz of each run (run.json beside it)")
    p.add_argument("--out", type=Path, required=True, help="JSON list of the runs' metrics")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("aggregate", help="tables: mean +- std over folds")
    p.add_argument("--metrics", type=Path, nargs="+", required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--method-order", nargs="+", required=True)
    p.add_argument("--protocol", required=True)
    p.add_argument("--summary-json", type=Path, required=True)
    p.add_argument("--predictions", type=Path, nargs="+", help="every run's predictions.npz: the agreement tables")
    p.add_argument("--published", type=Path, help="published numbers (config/published.csv): the comparison table")
    p.add_argument("--paper-specs", type=Path, help="the papers' table layouts (config/paper_tables.yaml)")
    p.add_argument("--paper-tables", nargs="*", default=[], help="keys of the paper tables to write under <out-dir>/papers/")
    p.add_argument("--variants", nargs="*", default=[], help="name=description of each variant, listed under the summary")
    p.add_argument("--tuning-best", type=Path, nargs="*", default=[], help="best.json of every tuning study: the budget table")
    p.set_defaults(func=cmd_aggregate)

    p = commands.add_parser("figure-tables", help="accuracy, ECE, fusions and agreement figures (MLB Figs. 3-6)")
    p.add_argument("--runs", type=Path, required=True, help="runs.csv written by aggregate")
    p.add_argument("--agreement", type=Path, required=True, help="agreement.csv written by aggregate")
    p.add_argument("--method-order", nargs="+", required=True)
    p.add_argument("--dpi", type=int, default=150)
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(func=cmd_figure_tables)

    p = commands.add_parser("figure-training", help="balance, unimodal accuracies and logit norms over training (OGM-GE Fig. 3, OLM Fig. 5)")
    p.add_argument("--histories", type=Path, nargs="+", required=True, help="history.csv of every method and fold of one panel")
    p.add_argument("--dpi", type=int, default=150)
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(func=cmd_figure_training)

    p = commands.add_parser("settings", help="print the grid's cells, or the resolved settings of one cell")
    p.add_argument("--configfile", type=Path, nargs="+", default=[Path("config/config.yaml")],
                   help="configs merged in order, as snakemake's (the default config first)")
    p.add_argument("--cell", help="<dataset>/<backbone>/<fusion>/<method>/<variant>/fold<k>; omit to list the cells")
    p.set_defaults(func=cmd_settings)

    p = commands.add_parser("benchmark", help="time one training step at the papers' input sizes")
    p.add_argument("--backbones", nargs="+", default=["resnet18", "conformer"], choices=["resnet18", "conformer"])
    p.add_argument("--fusions", nargs="+", default=["late_linear", "transformer"])
    p.add_argument("--batch-size", type=int, default=None, help="default: MLB's (32 ResNet18, 8 Conformer)")
    p.add_argument("--extraction", action="store_true", help="also time the Conformer's frozen extraction per clip")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads (and the reference-style loader's workers)")
    p.add_argument("--pipeline", action="store_true",
                   help="instead: the input pipeline (in memory vs streamed, augmentation, a reference-style loader) and the "
                        "training step around it (model only vs full, fp32 vs bf16, channels-last), at OGM-GE's CREMA-D sizes")
    p.add_argument("--startup", action="store_true",
                   help="instead: what a training job imports before its first step, each part timed in a fresh interpreter")
    p.add_argument("--clips", type=int, default=512, help="--pipeline: clips in the generated store")
    p.add_argument("--rounds", type=int, default=3, help="--pipeline: rounds of the step timings, configurations taking turns (0: the data path only)")
    p.set_defaults(func=cmd_benchmark)
    return parser


def entry() -> None:
    """The command line (`python -m mmbalance`, the `mmbalance` script): main(), re-executed
    first with tcmalloc preloaded for the commands that train (mmbalance.allocator)."""
    from mmbalance.allocator import reexec_with_preload

    reexec_with_preload(sys.argv[1:])
    main()


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    args = build_parser().parse_args(argv)
    args.func(args)
