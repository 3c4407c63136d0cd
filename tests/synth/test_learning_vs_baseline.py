"""`make test` shows that a model learns (issue #13, defect 10): a tiny 2D U-Net trained on a few tiny synthetic LGG
patients beats, on held-out patients' tumour slices, both the FLAIR threshold chosen on the training patients and the
same network trained with shuffled labels (each training patient gets another patient's masks)."""

from __future__ import annotations

import numpy as np
import pytest

from medtf.evaluation.baselines import fit_flair_threshold, flair_threshold_mask, tumour_slice_dice
from medtf.synth.lgg_mri import lgg_patient

SIZE, SLICES, SEED = 48, 10, 7
TRAIN, TEST = range(0, 6), range(6, 9)
MARGIN = 0.15


def _stack(patients):
    x = np.concatenate([image for _, image, _, _ in patients]).astype(np.float32) / 255.0
    y = np.concatenate([tumour for _, _, tumour, _ in patients]).astype(np.float32)[..., None]
    return x, y


def _fit_predict(x, y, x_test, seed: int = 0) -> np.ndarray:
    import keras

    from medtf.losses import get_loss
    from medtf.models import get_model

    keras.utils.set_random_seed(seed)
    model = get_model("unet2d_small", in_channels=3, num_classes=1, depth=3, base_filters=8, norm="instance",
                      final_activation="sigmoid", input_shape=(SIZE, SIZE))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=get_loss("dice_focal"))
    rng = np.random.default_rng(seed)
    # oversample tumour slices (as the patch sampler's foreground ratio does) and flip for a little augmentation
    tumour = np.flatnonzero(y.reshape(len(y), -1).any(axis=1))
    index = np.concatenate([np.arange(len(x)), np.repeat(tumour, 2)])
    xs, ys = x[index], y[index]
    flip = rng.random(len(xs)) < 0.5
    xs[flip], ys[flip] = xs[flip, :, ::-1], ys[flip, :, ::-1]
    model.fit(xs, ys, batch_size=8, epochs=15, shuffle=True, verbose=0)
    return model.predict(x_test, batch_size=16, verbose=0)[..., 0] > 0.5


@pytest.fixture(scope="module")
def data():
    train = [lgg_patient(i, seed=SEED, num_slices=SLICES, size=SIZE) for i in TRAIN]
    test = [lgg_patient(i, seed=SEED, num_slices=SLICES, size=SIZE) for i in TEST]
    return train, test


def test_unet_beats_flair_threshold_and_shuffled_labels_on_held_out_patients(data):
    train, test = data
    x, y = _stack(train)
    x_test, y_test = _stack(test)
    truth = y_test[..., 0] > 0
    assert truth.reshape(len(truth), -1).any(axis=1).sum() >= 8  # enough held-out tumour slices to score

    rule = fit_flair_threshold([(image, tumour) for _, image, tumour, _ in train])
    threshold = np.mean(tumour_slice_dice(flair_threshold_mask(x_test, **rule["params"]), truth))

    model = np.mean(tumour_slice_dice(_fit_predict(x, y, x_test), truth))

    # control: every training patient's masks replaced by the next patient's (slice by slice, resized by index)
    shuffled = []
    for k, (name, image, _, oedema) in enumerate(train):
        other = train[(k + 1) % len(train)][2]
        pick = np.round(np.linspace(0, len(other) - 1, len(image))).astype(int)
        shuffled.append((name, image, other[pick], oedema))
    xs, ys = _stack(shuffled)
    control = np.mean(tumour_slice_dice(_fit_predict(xs, ys, x_test), truth))

    print(f"held-out tumour-slice Dice: model {model:.3f}, FLAIR threshold {threshold:.3f} ({rule['params']}), "
          f"shuffled-label control {control:.3f}")
    assert model > threshold + MARGIN, (model, threshold)
    assert model > control + MARGIN, (model, control)
    assert model > 0.35, model
