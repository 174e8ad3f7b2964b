"""The one training loop, for every method.

A method plugs in through the balancer hooks (`mmbalance.balancers.base`); the
loop itself never asks which method it runs. Each epoch trains on the fold's
train split, evaluates validation and test, writes a checkpoint atomically
(model, optimizer, scheduler, RNG states, balancer state, history, best epoch,
MLflow run id) and then logs the epoch. A job killed at any point resumes from
its last checkpoint and ends with the same numbers as an uninterrupted run, in
the same MLflow run with one point per epoch (`mmbalance.checkpoint` has the
files, the lock and the safe loading; `mmbalance.tracking.Tracker` the run).
The model is selected on validation accuracy; test is reported at that epoch.
A training loss that is not finite stops the job naming the cell, epoch and
step, unless `train.on_nonfinite: continue` (then the steps are counted in
the history's `nonfinite_steps`, and the tables mark the run).

Outputs in `out_dir`: history.csv (one row per epoch), predictions.npz (test
probabilities at the best epoch), model.pt (best weights), run.json.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch

from mmbalance import allocator, checkpoint
from mmbalance.balancers import build_balancer
from mmbalance.balancers.base import EpochContext, true_class_confidence
from mmbalance.data.recipes import TRAINING_KEYS
from mmbalance.data.store.features import FeatureStore
from mmbalance.devices import training_device
from mmbalance.io import write_atomic, write_text_atomic
from mmbalance.models.multimodal import build_model
from mmbalance.step import NonFiniteLoss, autocast, training_step
from mmbalance.tracking import Tracker, git_commit

log = logging.getLogger(__name__)
ALL_MODALITIES = ("audio", "video")


def build_optimizer(params, settings: dict) -> torch.optim.Optimizer:
    name = settings["name"]
    if name == "adam":
        return torch.optim.Adam(params, lr=settings["lr"], betas=tuple(settings["betas"]), eps=settings["eps"], weight_decay=settings["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=settings["lr"], momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    raise ValueError(f"unknown optimizer {name!r}; known: adam, sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, settings: dict):
    """Stepped once per epoch. `step` is the StepLR of OGM-GE, PMR, AGM."""
    if settings["name"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)
    if settings["name"] == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, settings["step_size"], settings["gamma"])
    raise ValueError(f"unknown scheduler {settings['name']!r}; known: constant, step")


# Training settings that change where or how fast a cell runs, never what it computes.
SCHEDULING_KEYS = ("store_budget_mb", "jobs_per_gpu")


def settings_fingerprint(settings: dict) -> str:
    """Identifies what a checkpoint was trained with; the tracking target and the
    scheduling keys may change between attempts without invalidating it."""
    relevant = {k: v for k, v in settings.items() if k != "tracking"}
    relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in SCHEDULING_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def augmentation(recipe: dict, seed: int, stream: int) -> torch.Generator | None:
    """The generator training crops and flips are drawn from, or None without augmentation.
    Stream 0 is the training batches' (saved in checkpoints); the epoch hooks draw from
    streams seeded by the epoch, so they never shift the training batches' crops."""
    if recipe["augment"] == "none":
        return None
    return torch.Generator().manual_seed(seed * 100_003 + 50_021 + stream)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite (a diverging run)."""


@torch.no_grad()
def predict(model, store: FeatureStore, rows: torch.Tensor, batch_size: int, norms: dict | None = None,
            precision: str = "fp32") -> dict[str, np.ndarray]:
    """Softmax probabilities of the fused output and of every modality's head.
    Fills `norms` (if given) with each head's per-sample logit L2 norm."""
    model.eval()
    outputs, logit_norms = defaultdict(list), defaultdict(list)
    for _, inputs in store.batches(rows, batch_size, model.modalities):
        with autocast(store.device, precision):
            out = model(inputs)
        outputs["fused"].append(out.fused.float().softmax(1).cpu())
        for m, logits in out.unimodal.items():
            logits = logits.float()
            outputs[m].append(logits.softmax(1).cpu())
            logit_norms[m].append(logits.norm(dim=1).cpu())
    if norms is not None:
        norms.update({m: torch.cat(n).numpy() for m, n in logit_norms.items()})
    return {head: torch.cat(probs).numpy() for head, probs in outputs.items()}


def logit_norms_per_class(norms: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """`logit_norm/<modality>/<class>`: mean logit norm of each head over the
    clips of each class (OLM Fig. 5: a dominant modality has larger logits)."""
    return {
        f"logit_norm/{m}/{name}": float(values[labels == c].mean()) if (labels == c).any() else float("nan")
        for m, values in norms.items()
        for c, name in enumerate(class_names)
    }


def accuracies(probs: dict[str, np.ndarray], labels: np.ndarray, split: str) -> dict[str, float]:
    acc = {f"{split}_acc": float((probs["fused"].argmax(1) == labels).mean())}
    for m in ALL_MODALITIES:
        acc[f"{split}_acc_{m}"] = float((probs[m].argmax(1) == labels).mean()) if m in probs else float("nan")
    return acc


def dominance_ratios(unimodal: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """`ratio_<m>`: modality m's mean true-class confidence over the mean of the
    others' (OGM-GE's discrepancy ratio), measured on the heads the same way for
    every method, so figures compare methods on one scale."""
    if len(unimodal) < 2:
        return {}
    scores = {m: true_class_confidence(logits, labels).mean().item() for m, logits in unimodal.items()}
    ratios = {}
    for m, score in scores.items():
        others = [v for k, v in scores.items() if k != m]
        ratios[f"ratio_{m}"] = score / max(sum(others) / len(others), 1e-8)
    return ratios


def sample_batches(store, rows, modalities, batch_size, seed, epoch, split: str, fraction: float = 1.0, augment: str = "none"):
    """(inputs, labels) over a shuffled fraction of a split, for the epoch hooks.
    Its own generators, seeded by (seed, epoch): the training order and crops are
    untouched and a resumed run draws the same samples. Training rows are augmented
    as training batches are (the references' hooks read the training loader)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    members = rows[split][torch.randperm(len(rows[split]), generator=generator)]
    members = members[: max(1, round(fraction * len(members)))]
    crops = augmentation({"augment": augment}, seed, 1 + epoch) if split in ("train", "holdout") else None
    for batch, inputs in store.batches(members, batch_size, modalities, crops):
        yield inputs, store.labels[batch]


def carve_holdout(rows: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a fold's training rows into (trained, held out): round(fraction * n_c) rows
    of each class c, drawn with a generator of the run's seed alone, so every epoch and
    a resumed run hold out the same rows. Both keep the order of `rows`."""
    generator = torch.Generator().manual_seed(seed * 100_003 + 99_991)  # apart from sample_batches' (seed, epoch) streams
    labels = labels.cpu()
    held = torch.zeros(len(rows), dtype=torch.bool)
    for c in labels.unique(sorted=True).tolist():
        members = (labels == c).nonzero()[:, 0]
        held[members[torch.randperm(len(members), generator=generator)[: round(fraction * len(members))]]] = True
    held = held.to(rows.device)
    return rows[~held], rows[held]


def train_one_epoch(model, balancer, optimizer, store, rows, batch_size, epoch, data_order, on_nonfinite="stop", cell="",
                    augment: torch.Generator | None = None, precision: str = "fp32") -> dict[str, float]:
    model.train()
    sums, count, correct, nonfinite = defaultdict(float), 0, 0, 0
    order = rows[torch.randperm(len(rows), generator=data_order)]
    for step, (batch, inputs) in enumerate(store.batches(order, batch_size, model.modalities, augment)):
        labels = store.labels[batch]
        try:
            result = training_step(model, balancer, optimizer, inputs, labels, epoch,
                                   stop_on_nonfinite=on_nonfinite == "stop", precision=precision)
        except NonFiniteLoss as error:
            raise NonFiniteLossError(
                f"cell {cell}: the training loss is {error.args[0]} at epoch {epoch}, step {step}; the run diverged "
                "(lower train.optimizer.lr, or set train.on_nonfinite: continue to keep training and mark the run)"
            ) from None
        nonfinite += not math.isfinite(result.loss)
        logs = result.logs | dominance_ratios(result.out.unimodal, labels)
        n = len(batch)
        count += n
        correct += int((result.out.fused.argmax(1) == labels).sum())
        sums["train_loss"] += result.loss * n
        for key, value in logs.items():
            sums[f"balance/{key}"] += value * n
    return {key: total / count for key, total in sums.items()} | {"train_acc": correct / count, "nonfinite_steps": nonfinite}


def teacher_digests(method_settings: dict) -> dict[str, str]:
    """SHA-256 of each teacher model a method reads (UMT): a retrained teacher under the
    same path must retrain the cell, not reuse its finished outputs."""
    digests = {}
    for modality, path in sorted(method_settings.get("teacher_models", {}).items()):
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        digests[modality] = digest.hexdigest()
    return digests


def train(features_dir: Path, settings: dict, out_dir: Path, checkpoint_path: Path, tuning: dict | None = None) -> dict:
    """Train one grid cell; resumes from `checkpoint_path` when it holds a state of these
    settings, and only rewrites the outputs when the cell already finished (`final.pt`).

    `tuning` makes it a trial of a study (mmbalance.tuning): {"study", "trial", "parent_run",
    "report"}. Then only the training and validation splits are used (the test rows are not
    even looked up), `report(epoch, val_acc)` is called after each epoch (it may stop the
    trial), the MLflow run is nested under the study's, and only history.csv and run.json
    are written."""
    out_dir, checkpoint_path = Path(out_dir), Path(checkpoint_path)
    cell = settings["cell"]
    run_name = "/".join(str(cell[k]) for k in ("dataset", "backbone", "fusion", "method", "variant")) + f"/fold{cell['fold']}"
    lock = checkpoint.CellLock(checkpoint_path.parent, run_name)  # before anything is read or written
    try:
        checkpoint.remove_stale_temporaries(checkpoint_path.parent, out_dir)
        return _train(Path(features_dir), settings, out_dir, checkpoint_path, run_name, tuning)
    finally:
        lock.release()


def _train(features_dir: Path, settings: dict, out_dir: Path, checkpoint_path: Path, run_name: str, tuning: dict | None) -> dict:
    seed, recipe, cell = settings["seed"], settings["train"], settings["cell"]
    torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
    lease = training_device(recipe["device"], jobs_per_gpu=recipe["jobs_per_gpu"])
    device = torch.device(lease.device)
    log.info("device: %s; memory allocator: %s", lease.describe(), allocator.active())

    store = FeatureStore.load(features_dir).place(device, recipe["store_budget_mb"])
    store.pixels = recipe["pixels"]
    fingerprint = settings_fingerprint(settings)
    tags = cell | {"seed": seed, "mlflow.source.git.commit": git_commit(), "data_hash": store.meta["data_hash"], "device": lease.describe(),
                   "settings_fingerprint": fingerprint}
    tags |= {f"recipe.{k}": v for k, v in store.meta["recipe"].items()} | {"protocol": store.meta.get("protocol", "")}
    tags |= {f"recipe.{k}": recipe[k] for k in TRAINING_KEYS}  # the recipe keys read here, not by the store
    if tuning is not None:
        tags |= {"study": tuning["study"], "trial": tuning["trial"], "kind": "trial", "mlflow.parentRunId": tuning["parent_run"]}
    splits = ("train", "val") if tuning is not None else ("train", "val", "test")
    tracking = settings["tracking"]
    final_path = checkpoint_path.with_name("final.pt")
    # What a finished cell's outputs depend on: reused only when all of it is the same.
    final_key = {"settings": fingerprint, "code": checkpoint.code_fingerprint(), "data": store.meta["data_hash"], "device": device.type,
                 "teachers": teacher_digests(settings["method_settings"])}

    try:
        final = checkpoint.load(final_path, device) if tuning is None else None
        if final is not None and final.get("key") == final_key:
            log.info("%s finished before (%s): rewriting its outputs, not training again", run_name, final_path)
            tracker = Tracker(tracking["uri"], tracking["experiment"], final["run_id"], run_name, tags, settings)
            tracker.log_history(final["history"])
            summary = write_outputs(out_dir, store, store.split_rows(cell["fold"], "test"), final["history"], final["best"], tracker.run_id, lease.describe(), cell)
            tracker.finish("FINISHED")
            lease.release()
            return summary

        labels = store.labels.cpu().numpy()
        balancer = build_balancer(settings["method"], settings["method_settings"])
        modalities = list(balancer.modalities or ALL_MODALITIES)
        model = build_model(modalities, settings["backbone"], settings["fusion"], store.num_classes, not balancer.trains_unimodal_heads).to(device)
        if recipe["channels_last"] is True or (recipe["channels_last"] == "auto" and device.type == "cuda"):
            model = model.to(memory_format=torch.channels_last)
        if recipe["compile"]:
            model.compile()  # in place: the state dict keeps its keys, so checkpoints stay loadable
        balancer.setup(model)
        optimizer = build_optimizer(model.parameters(), recipe["optimizer"])
        scheduler = build_scheduler(optimizer, recipe["scheduler"])
        data_order = torch.Generator().manual_seed(seed)
        crops = augmentation(recipe, seed, 0)
        generators = {"data_order": data_order} | ({"augment": crops} if crops is not None else {})
        rows = {split: store.split_rows(cell["fold"], split) for split in splits}
        for split, members in rows.items():
            if len(members) == 0:
                raise ValueError(f"fold {cell['fold']} has no {split} clips in {features_dir}")
        store.standardise(rows["train"])
        # A method that estimates on unseen training data (Gradient-Blending) gets part of the
        # training rows held out: removed from rows["train"], read only by its epoch hooks.
        holdout = type(balancer).holdout_fraction(settings["method_settings"])
        if holdout > 0:
            rows["train"], rows["holdout"] = carve_holdout(rows["train"], store.labels[rows["train"]], holdout, seed)
            if len(rows["holdout"]) == 0:
                raise ValueError(f"holdout_fraction {holdout} of fold {cell['fold']}'s training clips holds out none; raise it")

        history, best, run_id, start_epoch = [], None, None, 0
        state = checkpoint.load(checkpoint_path, device)
        if state is not None and state.get("settings_fingerprint") != fingerprint:
            log.warning("ignoring %s: it was written with other settings", checkpoint_path)
            state = None
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            balancer.load_state_dict(state["balancer"])
            checkpoint.set_rng_states(state["rng"], generators)
            history, best, run_id, start_epoch = state["history"], state["best"], state["run_id"], state["epoch"]
            log.info("resuming from %s at epoch %d", checkpoint_path, start_epoch)

        tracker = Tracker(tracking["uri"], tracking["experiment"], run_id, run_name, tags, settings)
        tracker.log_history(history)  # epochs a kill kept from being logged
    except BaseException:
        lease.release()
        raise

    log.info("ready to train %.2f s after the job started", time.time() - psutil.Process().create_time())
    try:
        for epoch in range(start_epoch, recipe["epochs"]):
            began = time.perf_counter()
            row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            context = EpochContext(epoch, model, partial(sample_batches, store, rows, model.modalities, recipe["batch_size"], seed, epoch,
                                                         augment=recipe["augment"]), optimizer=optimizer)
            row |= {f"balance/{k}": v for k, v in balancer.on_epoch_start(context).items()}
            row |= train_one_epoch(model, balancer, optimizer, store, rows["train"], recipe["batch_size"], epoch, data_order,
                                   recipe["on_nonfinite"], run_name, crops, recipe["precision"])
            val_norms = {}
            val_probs = predict(model, store, rows["val"], recipe["eval_batch_size"], val_norms, recipe["precision"])
            row |= accuracies(val_probs, labels[rows["val"].cpu()], "val")
            if "test" in rows:
                test_probs = predict(model, store, rows["test"], recipe["eval_batch_size"], precision=recipe["precision"])
                row |= accuracies(test_probs, labels[rows["test"].cpu()], "test")
            if len(val_norms) > 1:  # a unimodal baseline has no heads to compare
                row |= logit_norms_per_class(val_norms, labels[rows["val"].cpu()], store.meta["class_names"])
            context.metrics = row
            row |= {f"balance/{k}": v for k, v in balancer.on_epoch_end(context).items()}
            scheduler.step()
            row["seconds"] = time.perf_counter() - began
            history.append(row)
            if (best is None or row["val_acc"] > best["val_acc"]) and tuning is not None:
                best = {"epoch": epoch, "val_acc": row["val_acc"]}  # a trial keeps no weights and sees no test
            elif best is None or row["val_acc"] > best["val_acc"]:
                best = {"epoch": epoch, "val_acc": row["val_acc"], "test_probs": {h: torch.from_numpy(p) for h, p in test_probs.items()},
                        "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
            state = {
                "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "balancer": balancer.state_dict(), "rng": checkpoint.rng_states(generators),
                "history": history, "best": best, "run_id": tracker.run_id, "settings_fingerprint": fingerprint,
            }
            checkpoint.save(checkpoint_path, state)  # first the state, then the log: a kill in between is healed by log_history
            tracker.log_epoch({k: v for k, v in row.items() if k != "epoch"}, epoch)
            if tuning is not None and tuning.get("report") is not None:
                tuning["report"](epoch, row["val_acc"])  # may stop the trial (pruning)
        if tuning is not None:
            summary = {"cell": cell, "run_id": tracker.run_id, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"],
                       "epochs": len(history), "study": tuning["study"], "trial": tuning["trial"]}
            write_text_atomic(out_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
            write_text_atomic(out_dir / "run.json", json.dumps(summary, indent=2))
            tracker.finish("FINISHED")
            checkpoint_path.unlink(missing_ok=True)
            return summary
        # What the outputs are made of, kept so that a rerun of this finished cell only rewrites them.
        checkpoint.save(final_path, {"key": final_key, "history": history, "best": best, "run_id": tracker.run_id})
        summary = write_outputs(out_dir, store, rows["test"], history, best, tracker.run_id, lease.describe(), cell)
        tracker.log_artifact(out_dir / "history.csv")
        tracker.finish("FINISHED")
        checkpoint_path.unlink(missing_ok=True)
    except BaseException:
        tracker.finish("FAILED")
        raise
    finally:
        lease.release()
    return summary


def save_npz(path: str, arrays: dict) -> None:
    with open(path, "wb") as handle:  # a file object: numpy would append .npz to a path
        np.savez_compressed(handle, **arrays)


def write_outputs(out_dir, store, test_rows, history, best, run_id, device, cell) -> dict:
    test_rows = test_rows.cpu().numpy()
    probs = {f"probs_{head}": np.asarray(torch.as_tensor(p).cpu(), dtype=np.float32) for head, p in best["test_probs"].items()}
    arrays = dict(
        clips=store.index["clip"].to_numpy()[test_rows].astype(str),
        labels=store.labels.cpu().numpy()[test_rows],
        class_names=np.array(store.meta["class_names"]),
        best_epoch=np.array(best["epoch"]),
        **probs,
    )
    write_atomic(out_dir / "predictions.npz", lambda tmp: save_npz(tmp, arrays))
    write_atomic(out_dir / "model.pt", lambda tmp: torch.save(best["model"], tmp))
    write_text_atomic(out_dir / "history.csv", pd.DataFrame(history).to_csv(index=False))
    summary = {"cell": cell, "run_id": run_id, "best_epoch": best["epoch"], "best_val_acc": best["val_acc"], "device": device, "epochs": len(history)}
    write_text_atomic(out_dir / "run.json", json.dumps(summary, indent=2))
    return summary
