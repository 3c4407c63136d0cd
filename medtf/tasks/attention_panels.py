"""[CLS] attention panels in TensorBoard for the ViT tasks (``masked_modeling``, ``nucleus_classification``).

For a few fixed validation tiles (the diagnostics' probe examples), every ``train.attention_every_n_epochs``
epochs, the attention of [CLS] in block ``train.attention_block`` (-1: the last) is drawn as one row
``[tile | grid heat map | nucleus boxes | head 0 | head 1 ...]``:

- grid heat map: [CLS] -> grid-token weights averaged over heads, bilinearly upsampled from the patch grid to the
  tile and blended over it (colour scale: 0 to the map's maximum, so faint and peaked maps both stay visible);
- nucleus boxes: the dimmed tile with every real nucleus box filled in the colour of [CLS]'s (head-averaged)
  weight on that nucleus token, on the scale 0 to the largest nucleus weight ([PAD] slots get none);
- with ``train.attention_per_head``: one grid heat map per head after them.

Tag ``attention/cls`` in ``RUN_DIR/logs/images`` (beside the other validation panels), step = epoch. The weights
come from `medtf.models.vit.attention_maps.AttentionProbe`, which leaves the model and its checkpoints unchanged.
Drawing is NumPy (and one bilinear resize), as `medtf.training.diagnostics`.
"""

from __future__ import annotations

import keras
import numpy as np

from medtf.training.diagnostics import _rgb, _unit, write_panels

# Piecewise-linear "hot" colour map: black -> purple -> red -> orange -> pale yellow (monotone in brightness,
# so the maps stay readable in grey too).
_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([[0.0, 0.0, 0.0], [0.35, 0.05, 0.5], [0.85, 0.2, 0.2], [1.0, 0.6, 0.0], [1.0, 1.0, 0.7]])


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in ``[0, 1]`` (any shape) -> RGB ``(..., 3)`` float32 on the hot colour map (clipped)."""
    v = np.clip(np.asarray(values, np.float64), 0.0, 1.0)
    return np.stack([np.interp(v, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def _scaled(values: np.ndarray) -> np.ndarray:
    top = float(np.max(values)) if np.size(values) else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def upsample(grid_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(gh, gw)`` -> ``(height, width)`` bilinear (half-pixel centres: each patch's value sits at its centre)."""
    import tensorflow as tf

    resized = tf.image.resize(np.asarray(grid_map, np.float32)[..., None], (height, width), method="bilinear")
    return resized.numpy()[..., 0]


def blend_heat(tile_rgb: np.ndarray, grid_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The tile ``(H, W, 3)`` in ``[0, 1]`` blended with the colour-mapped, upsampled ``grid_map (gh, gw)``."""
    heat = heat_colours(_scaled(upsample(grid_map, *tile_rgb.shape[:2])))
    return ((1 - alpha) * tile_rgb + alpha * heat).astype(np.float32)


def box_heat(tile_rgb: np.ndarray, boxes: np.ndarray, weights: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """The dimmed tile with each box ``[ymin, xmin, ymax, xmax]`` (pixels) filled in the colour of its weight
    (scaled to the largest), drawn smallest weight first so the strongest box stays on top where boxes overlap."""
    out = 0.5 * tile_rgb
    h, w = tile_rgb.shape[:2]
    colours = heat_colours(_scaled(np.asarray(weights, np.float64)))
    for i in np.argsort(weights, kind="stable"):
        y0, x0, y1, x1 = np.asarray(boxes[i], np.float64)
        r0, c0 = int(np.clip(np.floor(y0), 0, h - 1)), int(np.clip(np.floor(x0), 0, w - 1))
        r1, c1 = int(np.clip(np.ceil(y1), r0 + 1, h)), int(np.clip(np.ceil(x1), c0 + 1, w))
        out[r0:r1, c0:c1] = (1 - alpha) * out[r0:r1, c0:c1] + alpha * colours[i]
    return np.clip(out, 0, 1).astype(np.float32)


def attention_panel(image: np.ndarray, grid_rows: np.ndarray, nucleus_rows: np.ndarray, boxes=None,
                    per_head: bool = False) -> np.ndarray:
    """One tile's row ``(H, W * (3 [+ heads]), 3)`` float32 in ``[0, 1]`` (see the module docstring).

    Args:
        image: ``(H, W, C)`` tile as the model sees it (display-scaled to ``[0, 1]``).
        grid_rows: [CLS] -> grid weights ``(heads, gh, gw)``.
        nucleus_rows: [CLS] -> real nucleus tokens ``(heads, n)`` (``n = 0``: none).
        boxes: ``(n, 4)`` the real nuclei's boxes in pixels.
        per_head: append one grid heat map per head.
    """
    tile = _rgb(_unit(np.asarray(image, np.float32)))
    columns = [tile, blend_heat(tile, grid_rows.mean(axis=0))]
    n = nucleus_rows.shape[-1]
    columns.append(box_heat(tile, np.asarray(boxes)[:n], nucleus_rows.mean(axis=0)) if n else 0.5 * tile)
    if per_head:
        columns += [blend_heat(tile, head) for head in grid_rows]
    return np.concatenate(columns, axis=1).astype(np.float32)


def panel_inputs(example: dict):
    """The diagnostics' mapping of a parsed example: ``({"image", "boxes" if any}, image)`` (one tile each)."""
    x = {"image": example["image"]}
    if "boxes" in example:
        x["boxes"] = example["boxes"]
    return x, example["image"]


class AttentionPanels(keras.callbacks.Callback):
    """Write [CLS] attention panels of fixed validation tiles every ``every`` epochs (see the module docstring).

    Args:
        log_dir: TensorBoard folder (``run_dir/logs/images``).
        examples: ``[(x, y), ...]`` one tile each, ``x`` an image ``(1, H, W, C)`` or ``{"image", "boxes"
            (1, n, 4)}`` (`panel_inputs`).
        every: epochs between panels (epoch ``every - 1`` is the first); 0: never.
        block: the ViT block (-1: the last); per_head: add one map per head.
    """

    tag = "attention/cls"

    def __init__(self, log_dir, examples, every: int = 1, block: int = -1, per_head: bool = False):
        super().__init__()
        self.log_dir, self.examples = str(log_dir), list(examples)
        self.every, self.block, self.per_head = int(every), int(block), bool(per_head)
        self.logged_epochs: list[int] = []
        self._probe = self._writer = None

    def on_train_begin(self, logs=None):
        from medtf.models.vit.attention_maps import AttentionProbe

        self._probe = AttentionProbe(self.model, self.block)  # a bad block index fails before the first epoch

    def panels(self) -> np.ndarray:
        """``(N, H, W * columns, 3)`` panels of the examples with the current weights."""
        from medtf.models.vit.vit_backbone import image_hw

        if self._probe is None:
            self.on_train_begin()
        probe, out = self._probe, []
        size = image_hw(probe.backbone.image_size)
        for x, _ in self.examples:
            image, boxes = (x["image"], x.get("boxes")) if isinstance(x, dict) else (x, None)
            image = np.asarray(image, np.float32)
            if tuple(image.shape[1:3]) != size:
                raise ValueError(f"attention panels: validation tiles are {image.shape[1:3]}, the ViT takes "
                                 f"{size}; set data.val_patch_size to the model's image_size")
            inputs = probe.inputs(image, boxes)
            rows = probe.cls_rows(inputs)
            n = int(inputs["num_boxes"][0]) if isinstance(inputs, dict) and "num_boxes" in inputs else 0
            kept = None if boxes is None else np.asarray(boxes, np.float32)[0, :n]
            out.append(attention_panel(image[0], rows["grid"][0], rows["nuclei"][0, :, :n], kept, self.per_head))
        return np.stack(out)

    def on_epoch_end(self, epoch, logs=None):
        if self.every <= 0 or not self.examples or (epoch + 1) % self.every:
            return
        panels = self.panels()
        heads = " | head 0 ..." if self.per_head else ""
        write_panels(self, panels, epoch, f"[CLS] attention of block {self._probe.block}, mean over heads: tile | "
                                          f"grid tokens (heat map) | nucleus tokens (boxes){heads}")


def attention_diagnostics(train_cfg, paths, val_examples) -> list:
    """The `AttentionPanels` callback of a ViT task's diagnostics (none when ``train.image_panels`` is off,
    ``train.attention_every_n_epochs`` is 0 or there are no validation examples)."""
    every = getattr(train_cfg, "attention_every_n_epochs", 1)
    if not (train_cfg.image_panels and every and val_examples):
        return []
    return [AttentionPanels(paths.images, val_examples, every, getattr(train_cfg, "attention_block", -1),
                            getattr(train_cfg, "attention_per_head", False))]
