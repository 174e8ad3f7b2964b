"""Training augmentation (mmbalance.data.augment) and the streamed feature store.

Crop boxes follow torchvision's RandomResizedCrop rule (checked by hand and against
torchvision's own sampler), the batched crop equals a crop plus a bilinear resize, the same
seed draws the same crops, validation and test inputs are untouched, a killed run resumes
with the same crops, and a store read through its memory map trains to the same numbers as
one copied into memory.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmbalance import train as train_module
from mmbalance.data import augment
from mmbalance.data.store.features import FeatureStore


def boxes(seed, widths, heights, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return augment.crop_boxes(generator, torch.tensor(widths, dtype=torch.float64), torch.tensor(heights, dtype=torch.float64), **kwargs)


def test_boxes_stay_inside_the_frame_with_the_reference_scale_and_ratio():
    widths = [480, 320, 640, 100, 32] * 400
    heights = [360, 240, 360, 100, 96] * 400
    left, top, w, h = boxes(0, widths, heights).unbind(1)
    W, H = torch.tensor(widths, dtype=torch.float64), torch.tensor(heights, dtype=torch.float64)
    assert (left >= 0).all() and (top >= 0).all() and (left + w <= W).all() and (top + h <= H).all()
    assert (w >= 1).all() and (h >= 1).all()
    assert torch.equal(left, left.round()) and torch.equal(w, w.round())  # whole pixels, as torchvision
    fitted = ~((W == 32) & (H == 96))  # a 1:3 frame often falls back to the centre crop
    area = (w * h / (W * H))[fitted]
    # Side rounding moves the area and the ratio by at most about a pixel's worth.
    assert area.min() > 0.08 * 0.9 and area.max() <= 1.0
    ratio = (w / h)[fitted & (W >= 320)]
    assert ratio.min() > 0.75 * 0.99 and ratio.max() < 4 / 3 * 1.01


def test_boxes_by_hand():
    # Area exactly a quarter, ratio exactly 1: every box is 50 x 50 placed at whole offsets 0..50.
    left, top, w, h = boxes(1, [100] * 200, [100] * 200, scale=(0.25, 0.25), ratio=(1.0, 1.0)).unbind(1)
    assert torch.all(w == 50) and torch.all(h == 50)
    assert left.min() >= 0 and left.max() <= 50 and len(left.unique()) > 20
    # An area that never fits: torchvision's fallback, the centre crop with the ratio clamped.
    # 400 x 100 is wider than 4/3: h = 100, w = round(100 * 4/3) = 133, left = (400 - 133) // 2 = 133.
    assert boxes(2, [400], [100], scale=(2.0, 2.0)).tolist() == [[133.0, 0.0, 133.0, 100.0]]
    # 100 x 400 is taller than 3/4: w = 100, h = round(100 / 0.75) = 133, top = (400 - 133) // 2 = 133.
    assert boxes(2, [100], [400], scale=(2.0, 2.0)).tolist() == [[0.0, 133.0, 100.0, 133.0]]
    # 120 x 100 lies within the ratios: the whole frame.
    assert boxes(2, [120], [100], scale=(2.0, 2.0)).tolist() == [[0.0, 0.0, 120.0, 100.0]]


def test_box_distribution_matches_torchvision():
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(0)
    image = torch.zeros(3, 360, 480)
    reference = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)], dtype=torch.float64)
    ref_area = reference[:, 2] * reference[:, 3] / (360 * 480)
    ref_ratio = (reference[:, 3] / reference[:, 2]).log()  # get_params returns (top, left, h, w)
    ours = boxes(3, [480] * 4000, [360] * 4000)
    area = ours[:, 2] * ours[:, 3] / (360 * 480)
    ratio = (ours[:, 2] / ours[:, 3]).log()
    # Means and spreads agree within a few standard errors of 4000 draws.
    for a, b in ((area, ref_area), (ratio, ref_ratio)):
        error = 4 * math.sqrt(a.var() / len(a) + b.var() / len(b))
        assert abs(a.mean() - b.mean()) < error
        assert abs(a.std() - b.std()) < 0.1 * b.std()


def test_crop_resize_is_a_crop_then_a_bilinear_resize():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 40, 40)
    box = [[5.0, 7.0, 20.0, 12.0], [10.0, 0.0, 30.0, 32.0], [0.0, 0.0, 40.0, 40.0]]  # shrunk by < 2x: k = 1 too
    out = augment.crop_resize(images, torch.tensor(box), 32)
    for i, (left, top, w, h) in enumerate(box):
        crop = images[i : i + 1, :, int(top) : int(top + h), int(left) : int(left + w)]
        expected = F.interpolate(crop, size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(out[i : i + 1], expected, atol=1e-5)
    flipped = augment.crop_resize(images, torch.tensor(box), 32, flips=torch.tensor([True, False, False]))
    assert torch.allclose(flipped[0], out[0].flip(-1), atol=1e-6) and torch.equal(flipped[1], out[1])


def test_crop_resize_shrinks_by_averaging():
    # A 16 x 16 box onto 8 x 8: k = 2 samples per output pixel and axis, at pixel centres,
    # so each output is the mean of a 2 x 2 block (the area filter).
    images = torch.arange(2 * 20 * 20, dtype=torch.float32).reshape(2, 1, 20, 20)
    out = augment.crop_resize(images, torch.tensor([[2.0, 4.0, 16.0, 16.0], [0.0, 0.0, 8.0, 8.0]]), 8)
    assert torch.allclose(out[0], F.avg_pool2d(images[0:1, :, 4:20, 2:18], 2)[0])
    assert torch.allclose(out[1], images[1, :, :8, :8], atol=1e-3)  # k = 1 for this one: its pixels as they are


def test_same_seed_same_crops_and_eval_untouched():
    frames = torch.randint(0, 256, (6, 3, 48, 48), dtype=torch.uint8)
    sizes = torch.tensor([64.0, 64.0, 48.0, 48.0, 48.0, 48.0]), torch.tensor([48.0, 48.0, 48.0, 48.0, 36.0, 36.0])
    first = augment.augment_frames(frames, torch.Generator().manual_seed(5), *sizes, 32)
    again = augment.augment_frames(frames, torch.Generator().manual_seed(5), *sizes, 32)
    other = augment.augment_frames(frames, torch.Generator().manual_seed(6), *sizes, 32)
    assert first.shape == (6, 3, 32, 32) and torch.equal(first, again) and not torch.equal(first, other)
    # The stored channels-last layout gives the same crops as a contiguous copy.
    channels_last = frames.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert torch.equal(augment.augment_frames(channels_last, torch.Generator().manual_seed(5), *sizes, 32), first)
    assert augment.resize_frames(frames, 48) is frames


def test_eval_resize_is_pils_bilinear_resize():
    """The references' test transform is Resize((224, 224)) on a PIL image: antialiased bilinear
    on uint8. The store's resize (uint8, on the stored channels-last layout) stays within one grey
    level of PIL's, and its float-and-round variant for devices without the uint8 kernel within
    one grey level of it."""
    from PIL import Image

    smooth = F.interpolate(torch.rand(4, 3, 12, 12) * 255, size=(60, 60), mode="bicubic").clamp(0, 255).round().to(torch.uint8)
    stored = smooth.permute(0, 2, 3, 1).contiguous()  # (n, S, S, 3) as in frames.npy
    ours = augment.resize_frames(stored.permute(0, 3, 1, 2), 24)
    assert ours.dtype == torch.uint8 and ours.shape == (4, 3, 24, 24)
    for image, resized in zip(stored.numpy(), ours):
        pil = np.asarray(Image.fromarray(image).resize((24, 24), Image.BILINEAR))
        assert np.abs(resized.permute(1, 2, 0).numpy().astype(int) - pil.astype(int)).max() <= 1
    rounded = augment.resize_rounded(stored.permute(0, 3, 1, 2), 24)
    assert rounded.dtype == torch.uint8 and (rounded.float() - ours.float()).abs().max() <= 1


def test_normalise_pixels_takes_stored_uint8_in_any_layout():
    frames = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # channels-last view
    mean, std = torch.tensor(augment.IMAGENET_MEAN)[:, None, None], torch.tensor(augment.IMAGENET_STD)[:, None, None]
    rgb = augment.normalise_pixels(frames)
    assert rgb.is_contiguous() and rgb.dtype == torch.float32
    assert torch.allclose(rgb, (frames.float() / 255 - mean) / std, atol=1e-5)
    bgr = augment.normalise_pixels(frames, "bgr_255")
    assert torch.allclose(bgr, (frames.flip(1).float() - mean) / std, atol=1e-4)


def test_store_augments_training_batches_only(tiny_store):
    store = FeatureStore.load(tiny_store).place("cpu")
    rows = store.split_rows(1, "train")[:6]
    plain = store.inputs(rows, ["audio", "video"])
    crops = store.inputs(rows, ["audio", "video"], torch.Generator().manual_seed(0))
    assert crops["video"].shape == plain["video"].shape and not torch.equal(crops["video"], plain["video"])
    assert torch.equal(crops["audio"], plain["audio"])
    # Without augmentation a frame is the stored pixels, ImageNet-normalised, nothing else.
    raw = torch.from_numpy(np.load(tiny_store / "frames.npy")[rows.numpy()]).permute(0, 1, 4, 2, 3).float() / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(plain["video"], (raw - mean) / std, atol=1e-5)
    index = pd.read_csv(tiny_store / "index.csv")
    assert (index.loc[~index["skipped"], ["source_width", "source_height"]] > 0).all().all()


def augmented(settings: dict) -> dict:
    """The settings with the recipe's `augment: reference` (a dataset key the cell's settings carry)."""
    settings["train"]["augment"] = "reference"
    return settings


def run(tiny_store, settings, root, name):
    train_module.train(tiny_store, settings, root / name, root / f"{name}-ckpt" / "last.pt")
    return pd.read_csv(root / name / "history.csv").drop(columns=["seconds"])


def test_streamed_and_in_memory_stores_train_identically(tiny_store, train_settings, tmp_path, caplog):
    """A budget of a third of the store's size streams it from the memory map; the history is
    the same to the last bit as with the store copied into memory."""
    nbytes = FeatureStore.load(tiny_store).nbytes
    resident = run(tiny_store, augmented(train_settings("ogm_ge", epochs=2)), tmp_path, "resident")
    settings = augmented(train_settings("ogm_ge", epochs=2, store_budget_mb=nbytes / 3 / 1e6))
    with caplog.at_level("INFO", logger="mmbalance.data.store.features"):
        streamed = run(tiny_store, settings, tmp_path, "streamed")
    assert any("streamed from its memory map" in r.getMessage() for r in caplog.records)
    pd.testing.assert_frame_equal(resident, streamed, check_exact=True)


def test_a_killed_run_resumes_with_the_same_crops(tiny_store, train_settings, tmp_path, monkeypatch):
    settings = augmented(train_settings("joint", epochs=3))
    reference = run(tiny_store, settings, tmp_path, "reference")
    plain = run(tiny_store, train_settings("joint", epochs=3), tmp_path, "plain")
    assert not reference["train_loss"].equals(plain["train_loss"])  # augmentation changed training

    real_log_epoch = train_module.Tracker.log_epoch

    def fail_after_epoch_1(self, metrics, epoch):
        real_log_epoch(self, metrics, epoch)
        if epoch == 1:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_module.Tracker, "log_epoch", fail_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_store, settings, tmp_path, "resumed")
    monkeypatch.setattr(train_module.Tracker, "log_epoch", real_log_epoch)
    pd.testing.assert_frame_equal(run(tiny_store, settings, tmp_path, "resumed"), reference, check_exact=True)


def test_embedding_statistics_batch_by_batch_equal_the_whole_split(tiny_embeddings):
    """standardise reads the split in batches (a streamed store never holds it at once); the
    merged mean and std equal those of the whole split."""
    store = FeatureStore.load(tiny_embeddings)
    rows = store.split_rows(1, "train")
    whole = {m: torch.from_numpy(np.asarray(a[rows.numpy()])).double().flatten(0, -2) for m, a in store.arrays.items()}
    store.standardise(rows, batch=3)
    for m, x in whole.items():
        mean, std = store.scale[m]
        assert torch.allclose(mean.double(), x.mean(0), rtol=1e-5, atol=1e-9)
        varying = x.std(0) > 1e-6
        assert torch.allclose(std.double()[varying], x.std(0)[varying], rtol=1e-4)
