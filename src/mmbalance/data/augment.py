"""Training augmentation of frames, as every reference loader does it, batched on the device.

The reference loaders (OGM-GE's dataset/CramedDataset.py and VGGSoundDataset.py in
GeWu-Lab/OGM-GE_CVPR2022, PMR, AGM, MMCosine and MLB's ResNet datasets) build each training
frame with torchvision's

    RandomResizedCrop(224)      scale (0.08, 1), ratio (3/4, 4/3), bilinear
    RandomHorizontalFlip()      p = 0.5

called once per frame, so every frame of a clip gets its own crop and flip; validation and
test frames get `Resize((224, 224))` only. The feature store keeps frames already resized to
a square of `store_size` pixels (`mmbalance.data.recipes`), so here:

* `crop_boxes` draws each frame's box with RandomResizedCrop's rule in the *source* frame's
  pixels (width x height of the original video, kept per clip in the store's index), so
  the box's area and aspect ratio follow the reference's distributions, then maps the box
  onto the stored square;
* `crop_resize` cuts every box out of the batch and resizes it to `frame_size` with batched
  operations on the training device (`grid_sample`, bilinear, with an area average over
  sub-samples when a box is at least twice the output, close to an antialiased resize);
* the flips are drawn from the same generator.

Departures from torchvision, all in how random numbers are drawn, not in the distribution:
the ten attempts of the rejection rule are drawn for all frames at once from the run's own
generator (torchvision draws them one at a time from the global one), and the box corners
are fractional once mapped onto the stored square. The crop is taken from the stored square,
not from the original video, so a box smaller than `frame_size` stored pixels is enlarged from
fewer pixels than the reference had; a larger `store_scale` narrows that gap (the benchmark
reports the memory it costs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mmbalance.data.recipes import check_choices

# torchvision's ImageNet statistics, which every reference loader normalises frames with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE = (0.08, 1.0)  # torchvision RandomResizedCrop's defaults, used by every reference loader
RATIO = (3 / 4, 4 / 3)
ATTEMPTS = 10  # torchvision tries ten boxes before falling back to a centre crop
FLIP_PROBABILITY = 0.5


def crop_boxes(generator: torch.Generator, widths: torch.Tensor, heights: torch.Tensor,
               scale: tuple[float, float] = SCALE, ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """RandomResizedCrop's box for each frame, as (left, top, width, height) in source pixels.

    `widths`, `heights`: (n,) source frame sizes. For each frame, up to ATTEMPTS boxes with
    area U(scale) x W x H and aspect exp(U(log ratio)) are tried (sides rounded to pixels); the
    first that fits is placed at a uniformly random integer position. A frame where none fits
    gets the centre crop with its aspect clamped into `ratio`."""
    widths, heights = widths.double(), heights.double()
    n = len(widths)
    area = (widths * heights)[:, None]
    target = area * torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_ratio.exp()
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= widths[:, None]) & (h <= heights[:, None])
    first = fits.double().argmax(dim=1)  # first attempt that fits (0 when none does)
    found = fits.any(dim=1)
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    # Position: uniform over the integer offsets that keep the box inside the frame.
    u_top, u_left = torch.rand(n, dtype=torch.float64, generator=generator), torch.rand(n, dtype=torch.float64, generator=generator)
    top = torch.floor(u_top * (heights - h + 1)).clamp_max(heights - h)
    left = torch.floor(u_left * (widths - w + 1)).clamp_max(widths - w)
    # Fallback: the whole frame, narrowed to the nearest allowed aspect ratio, centred.
    in_ratio = widths / heights
    fw = torch.where(in_ratio > ratio[1], torch.round(heights * ratio[1]), widths)
    fh = torch.where(in_ratio < ratio[0], torch.round(widths / ratio[0]), heights)
    fleft, ftop = torch.div(widths - fw, 2, rounding_mode="floor"), torch.div(heights - fh, 2, rounding_mode="floor")
    boxes = torch.stack([torch.where(found, left, fleft), torch.where(found, top, ftop),
                         torch.where(found, w, fw), torch.where(found, h, fh)], dim=1)
    return boxes


def to_stored(boxes: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor, store_size: int) -> torch.Tensor:
    """Boxes in source pixels -> the same boxes on the stored `store_size` square."""
    sx = store_size / widths.double()
    sy = store_size / heights.double()
    return boxes * torch.stack([sx, sy, sx, sy], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Cut each box out of its image and resize it to size x size, batched.

    `images`: (n, C, S, S) float; `boxes`: (n, 4) (left, top, width, height) in image pixels;
    `flips`: (n,) bool, mirror those outputs left-right. Sampling is bilinear at pixel
    centres (align_corners=False), so a box less than twice `size` is a crop followed by
    torch's bilinear resize. A box k >= 2 times larger (k = floor(longer side / size)) is
    sampled k x k times per output pixel and averaged, the area filter an antialiased resize
    applies when it shrinks that much. (Shrinking by less than 2x, torchvision's antialiased
    bilinear widens its triangle filter by that factor; plain bilinear is kept there, and a
    store_size below twice frame_size never needs more than one grid_sample per batch.)
    One grid_sample per distinct k, so a frame's output never depends on its batch."""
    n, channels, height, width = images.shape
    # k from the boxes on the CPU, where they are drawn: reading them back from a GPU would stall it.
    factors = torch.floor(boxes[:, 2:].amax(dim=1).cpu() / size).clamp_min(1).long()
    boxes = boxes.to(device=images.device, dtype=torch.float32)
    flips = torch.zeros(n, dtype=torch.bool) if flips is None else flips
    out = images.new_empty(n, channels, size, size)
    for k in factors.unique().tolist():
        members = (factors == k).nonzero()[:, 0].to(images.device)
        group, steps = boxes[members], size * k
        # Sample positions at the centres of a steps x steps grid over each box, in pixels.
        grid_1d = (torch.arange(steps, device=images.device, dtype=torch.float32) + 0.5) / steps
        xs = group[:, 0:1] + group[:, 2:3] * grid_1d  # (m, steps)
        ys = group[:, 1:2] + group[:, 3:4] * grid_1d
        # Clamped to the box's outer pixel centres: a crop's border repeats, as in crop-then-resize.
        xs = torch.minimum(torch.maximum(xs, group[:, 0:1] + 0.5), group[:, 0:1] + group[:, 2:3] - 0.5)
        ys = torch.minimum(torch.maximum(ys, group[:, 1:2] + 0.5), group[:, 1:2] + group[:, 3:4] - 0.5)
        xs = torch.where(flips.to(images.device)[members][:, None], xs.flip(1), xs)
        # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the outer pixel edges.
        m = len(members)
        gx = (2 * xs / width - 1)[:, None, :].expand(m, steps, steps)
        gy = (2 * ys / height - 1)[:, :, None].expand(m, steps, steps)
        sampled = F.grid_sample(images[members], torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                                align_corners=False)
        out[members] = F.avg_pool2d(sampled, k) if k > 1 else sampled
    return out


def augment_frames(images: torch.Tensor, generator: torch.Generator, widths: torch.Tensor, heights: torch.Tensor,
                   size: int) -> torch.Tensor:
    """RandomResizedCrop + RandomHorizontalFlip of every frame of a batch.

    `images`: (n, C, S, S) frames on the training device (uint8 as stored, any memory layout);
    `widths`, `heights`: (n,) source sizes of each frame's clip. Draws n boxes and flips from
    `generator` (on the CPU, so a run's crops do not depend on the device) and returns
    (n, C, size, size) float grey levels."""
    n, c, s, _ = images.shape
    boxes = to_stored(crop_boxes(generator, widths, heights), widths, heights, s)
    flips = torch.rand(n, generator=generator) < FLIP_PROBABILITY
    # Reordered while still uint8, then widened: four times cheaper than permuting floats.
    return crop_resize(images.contiguous().float(), boxes, size, flips)


def resize_frames(images: torch.Tensor, size: int) -> torch.Tensor:
    """Validation and test: each whole stored frame resized to size x size, antialiased
    bilinear, in whole grey levels, as the references' `Resize((224, 224))` does on a PIL
    image (torchvision's uint8 tensor kernel follows PIL's filter); untouched when stored at
    that size. `images`: (n, C, S, S) uint8. On the CPU the uint8 kernel runs on the stored
    (channels-last) layout directly; other devices lack it, so they run the same filter in
    float and round, which can differ from it by one grey level where a value sits at .5."""
    s = images.shape[-1]
    if s == size:
        return images
    if images.device.type == "cpu":
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resize_rounded(images, size)


def resize_rounded(images: torch.Tensor, size: int) -> torch.Tensor:
    """resize_frames for devices without torch's uint8 antialiased kernel: the same filter
    in float, rounded to whole grey levels."""
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def normalise_pixels(frames: torch.Tensor, pixels: str = "rgb") -> torch.Tensor:
    """Frames (..., 3, H, W) in 0-255, RGB as stored -> the model's input, as the
    reference loaders scale them: "rgb" is torchvision's ToTensor (RGB / 255) then the
    ImageNet mean and std (every GeWu-Lab loader, MLB's CREMA-D and AVE); "bgr_255" is MLB's
    UCF101 loader (datasets/UCF101/UCF101_Dataset.py, get_frames), which normalises OpenCV's
    BGR frames with the same mean and std but neither reorders channels nor divides by 255.
    `frames` may be uint8 or float, in any memory layout; the result is contiguous float32,
    written once and scaled in place (one fused multiply-add per pixel)."""
    check_choices({"pixels": pixels}, "normalise_pixels")
    std = torch.tensor(IMAGENET_STD, device=frames.device)[:, None, None]
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device)[:, None, None]
    out = torch.empty(frames.shape, dtype=torch.float32, device=frames.device)
    out.copy_(frames.flip(-3) if pixels == "bgr_255" else frames)  # widened and reordered in one pass
    scale = 1 / std if pixels == "bgr_255" else 1 / (255 * std)
    return torch.addcmul(-mean / std, out, scale, out=out)
