"""Training's input pipeline, precision choice, early stopping and architecture drawing."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline import shards, store
from pipeline.batches import Batches
from pipeline.models import MODELS
from pipeline.params import EarlyStopping, Params
from pipeline.train import chance_loss, channel_moments, dtype_policy, nothing_learned, train
from tests.conftest import REPO, default_params


def _split(tmp_path, count=10, views=1) -> store.Split:
    pixels = np.arange(count, dtype=np.uint8).reshape(count, 1, 1, 1) * np.ones(
        (1, 4, 4, 1), np.uint8
    )
    labels = np.arange(count, dtype=np.float32)[:, None]
    store.write_splits(tmp_path, {"train": store.Split([pixels] * views, labels)}, {})
    return store.read_split(tmp_path, "train")


def _epoch(batches: Batches, epoch: int = 0) -> list[int]:
    """The row numbers epoch `epoch` yields, in order (each image's pixels are its row number)."""
    rows = []
    for index in range(epoch * len(batches), (epoch + 1) * len(batches)):
        pixels, labels = batches[index]
        first = pixels if isinstance(pixels, np.ndarray) else pixels[0]
        assert np.array_equal(first[:, 0, 0, 0], labels[:, 0])  # pixels and labels stay paired
        rows += labels[:, 0].astype(int).tolist()
    return rows


def test_batches_read_the_shards_in_a_new_seeded_order_each_epoch(tmp_path):
    split = _split(tmp_path)
    assert isinstance(split.views[0], shards.Rows)  # nothing loaded up front
    batches = Batches(split, inputs=1, batch_size=4, seed=7)
    assert len(batches) == 3  # 4 + 4 + 2 in an epoch
    assert batches.num_batches is None  # endless: Keras keeps one iterator for every epoch
    epochs = [_epoch(batches, epoch) for epoch in range(3)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs)  # each image once
    assert len({tuple(epoch) for epoch in epochs}) == 3
    # The seed and the index alone decide a batch, in whatever order batches are asked for.
    again = Batches(split, inputs=1, batch_size=4, seed=7)
    assert [_epoch(again, epoch) for epoch in (2, 0, 1)] == [epochs[2], epochs[0], epochs[1]]
    once = Batches(split, inputs=1, batch_size=4)
    assert once.num_batches == 3 and _epoch(once) == list(range(10))  # no seed: one pass in order


def test_batches_give_a_tuple_of_views_to_a_two_input_model(tmp_path):
    pixels, _ = Batches(_split(tmp_path, views=2), inputs=2, batch_size=4)[0]
    assert isinstance(pixels, tuple) and len(pixels) == 2


def test_mixed_precision_auto_halves_precision_on_a_gpu_only():
    assert dtype_policy("auto", "gpu") == "mixed_float16"
    assert dtype_policy("auto", "cpu") == "float32"
    assert dtype_policy("auto", "tpu") == "float32"
    assert dtype_policy("on", "cpu") == "mixed_float16"
    assert dtype_policy("off", "gpu") == "float32"


class _Epochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def on_epoch_end(self, epoch, logs=None):
        self.count += 1


def _noise(tmp_path, train_count: int, val_count: int) -> None:
    """Random 16x16 gray train and val images with 0/1 labels unrelated to the pixels."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in [("train", train_count), ("val", val_count)]:
        pixels = rng.integers(0, 256, (count, 16, 16, 1), np.uint8)
        labels = rng.integers(0, 2, (count, 1)).astype(np.float32)
        splits[split] = store.Split([pixels], labels)
    store.write_splits(tmp_path, splits, {})


def test_fit_takes_every_epoch_from_one_endless_run_of_batches(tmp_path, monkeypatch):
    _noise(tmp_path, train_count=12, val_count=4)
    asked, read = [], Batches.__getitem__

    def recorded(self, index):
        if self.seed is not None:  # the training batches
            asked.append(index)
        return read(self, index)

    monkeypatch.setattr(Batches, "__getitem__", recorded)
    raw = default_params()
    raw["train"].update(epochs=2, batch_size=4)
    epochs = _Epochs()
    train(store.read_split(tmp_path, "train"), store.read_split(tmp_path, "val"),
          Params.model_validate(raw), [epochs])  # fmt: skip
    assert epochs.count == 2
    # 3 batches an epoch: the second epoch went on to batches 3, 4 and 5 of the same
    # iterator instead of starting a new one at 0.
    assert set(range(6)) <= set(asked)


def test_early_stopping_ends_training_when_val_loss_stops_improving(tmp_path):
    _noise(tmp_path, train_count=32, val_count=16)  # val loss cannot keep improving
    raw = default_params()
    raw["train"].update(epochs=40, batch_size=8, learning_rate=0.05,
                        early_stopping={"patience": 2, "restore_best_weights": True})  # fmt: skip
    params = Params.model_validate(raw)
    epochs = _Epochs()
    train(store.read_split(tmp_path, "train"), store.read_split(tmp_path, "val"), params, [epochs])
    assert epochs.count < 40
    assert params.train.early_stopping == EarlyStopping(patience=2, restore_best_weights=True)


def test_without_graphviz_the_architecture_is_a_placeholder_and_training_goes_on(tmp_path):
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from pipeline.models import build_model\n"
        "from pipeline.train import architecture_png\n"
        "model = build_model('sequential', [(16, 16, 1)], 2)\n"
        "print(architecture_png(model, Path(sys.argv[1])))\n"
    )
    target = tmp_path / "architecture.png"
    # No `dot` on PATH: graphviz is not installed as far as pydot can tell.
    env = {**os.environ, "PATH": "/nonexistent", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, target], cwd=REPO, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert "needs graphviz" in done.stdout and "apt install graphviz" in done.stdout
    assert target.read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*partial*"))


def test_mixed_precision_and_several_steps_per_execution_train(tmp_path):
    rng = np.random.default_rng(1)
    splits = {}
    for split, count in [("train", 24), ("val", 8)]:
        pixels = rng.integers(0, 256, (count, 16, 16, 1), np.uint8)
        labels = np.eye(3, dtype=np.float32)[np.arange(count) % 3]
        splits[split] = store.Split([pixels], labels)
    store.write_splits(tmp_path, splits, {})
    raw = default_params()
    raw["train"].update(epochs=2, batch_size=4, mixed_precision="on", steps_per_execution=3)
    epochs = _Epochs()
    try:
        model = train(store.read_split(tmp_path, "train"), store.read_split(tmp_path, "val"),
                      Params.model_validate(raw), [epochs])  # fmt: skip
    finally:
        keras.config.set_dtype_policy("float32")  # the policy is global to the process
    assert epochs.count == 2
    assert model.layers[1].dtype_policy.name == "mixed_float16"
    assert model.get_layer("output").compute_dtype == "float32"  # softmax in full precision
    assert model.steps_per_execution == 3


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("classes", [2, 3])
def test_every_model_trains_an_epoch_on_tiny_data(tmp_path, model, classes):
    rng = np.random.default_rng(classes)
    splits = {}
    for split, count in [("train", 12), ("val", 6)]:
        labels = np.arange(count) % classes
        gray = (labels * 100).astype(np.uint8)[:, None, None, None] * np.ones(
            (1, 32, 32, 1), np.uint8
        )
        colour = rng.integers(0, 256, (count, 16, 16, 3), np.uint8)
        encoded = labels[:, None] if classes == 2 else np.eye(classes)[labels]
        splits[split] = store.Split([gray, colour], encoded.astype(np.float32))
    store.write_splits(tmp_path, splits, {})
    raw = default_params()
    raw["train"].update(model=model, epochs=1, batch_size=4)
    raw["ingest"]["color_mode"] = "rgb"
    raw["prepare"]["views"] = [{"image_size": [32, 32], "color_mode": "grayscale"},
                               {"image_size": [16, 16], "color_mode": "rgb"}]  # fmt: skip
    epochs = _Epochs()
    trained = train(store.read_split(tmp_path, "train"), store.read_split(tmp_path, "val"),
                    Params.model_validate(raw), [epochs])  # fmt: skip
    assert epochs.count == 1
    assert trained.output_shape == (None, 1 if classes == 2 else classes)
    assert len(trained.inputs) == MODELS[model].inputs
    # Each input is standardised on the training split: mean 0, variance 1 there.
    norms = [layer for layer in trained.layers if isinstance(layer, keras.layers.Normalization)]
    views = store.read_split(tmp_path, "train").views
    for layer, view in zip(norms, views, strict=False):
        standardised = np.asarray(layer(np.asarray(view))).reshape(-1, view.shape[-1])
        np.testing.assert_allclose(standardised.mean(axis=0), 0, atol=1e-4)
        np.testing.assert_allclose(standardised.var(axis=0), 1, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_every_model_trains_an_epoch_on_the_other_backends(backend):
    """The test above, run again in a process whose Keras uses another backend."""
    selected = f"{__file__}::test_every_model_trains_an_epoch_on_tiny_data"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", selected],
        cwd=REPO, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "8 passed" in done.stdout


@pytest.mark.parametrize("setting", [1, 2, 4, 9, 100])
def test_steps_per_execution_never_changes_the_batches_an_epoch_trains_on(tmp_path, setting):
    # 9 batches an epoch: 4 took 12 steps an epoch and 100 took 100, the bar saying 9/9.
    _noise(tmp_path, train_count=72, val_count=8)
    raw = default_params()
    raw["train"].update(epochs=2, batch_size=8, steps_per_execution=setting)
    model = train(store.read_split(tmp_path, "train"), store.read_split(tmp_path, "val"),
                  Params.model_validate(raw), [])  # fmt: skip
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 2 * 9


class _EveryEpoch(keras.callbacks.Callback):
    """Each epoch's val loss and the weights it ended with."""

    def __init__(self):
        super().__init__()
        self.val_losses, self.weights = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.val_losses.append(logs["val_loss"])
        self.weights.append([np.array(w) for w in self.model.get_weights()])


@pytest.mark.parametrize("restore", [True, False])
def test_restore_best_weights_ends_with_the_best_epochs_weights(tmp_path, restore):
    _noise(tmp_path, train_count=32, val_count=16)  # val loss cannot keep improving
    raw = default_params()
    stopping = {"patience": 2, "restore_best_weights": restore}
    raw["train"].update(epochs=40, batch_size=8, learning_rate=0.05, early_stopping=stopping)
    every = _EveryEpoch()
    model = train(store.read_split(tmp_path, "train"), store.read_split(tmp_path, "val"),
                  Params.model_validate(raw), [every])  # fmt: skip
    best = int(np.argmin(every.val_losses))
    assert best < len(every.val_losses) - 1  # stopped after epochs without a better val loss
    expected = every.weights[best] if restore else every.weights[-1]
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), expected, strict=True))


def test_nothing_learned_names_a_loss_at_chance_or_a_validation_at_the_largest_class():
    balanced, skewed = np.array([10, 10, 10]), np.array([90, 10])
    assert chance_loss(balanced) == pytest.approx(np.log(3))
    assert chance_loss(skewed) == pytest.approx(-(0.9 * np.log(0.9) + 0.1 * np.log(0.1)))
    learning = [{"loss": 1.2, "val_accuracy": 0.4}, {"loss": 0.4, "val_accuracy": 0.9}]
    assert nothing_learned(learning, balanced, balanced) is None
    stuck = [{"loss": 1.10, "val_accuracy": 0.34}, {"loss": 1.09, "val_accuracy": 0.35}]
    assert "training loss 1.090 stayed at the chance level 1.099" in nothing_learned(
        stuck, balanced, balanced
    )
    # Below ln 2, but at the entropy of a 90/10 balance: it learned the balance only.
    assert "chance level 0.325" in nothing_learned([{"loss": 0.33}], skewed, skewed)
    # The loss fell, but validation never beat always answering the largest class.
    majority = [{"loss": 0.2, "val_accuracy": 0.9}]
    assert "largest class (0.900)" in nothing_learned(majority, balanced, skewed)
    assert nothing_learned([{"loss": 0.2, "val_accuracy": 0.95}], balanced, skewed) is None


def test_channel_moments_are_the_splits_read_a_chunk_at_a_time(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 5, 4, 3), np.uint8) // np.array([1, 2, 4], np.uint8)
    np.save(tmp_path / "view.npy", pixels)
    mapped = np.load(tmp_path / "view.npy", mmap_mode="r")
    moments = channel_moments(mapped, chunk_bytes=8 * 5 * 4 * 3 * 8)  # 8 images a block
    flat = pixels.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(moments.mean, flat.mean(axis=0))
    np.testing.assert_allclose(moments.variance, flat.var(axis=0))
    blank = channel_moments(np.zeros((4, 2, 2, 1), np.uint8))
    assert blank.variance == (1.0,)  # floored: a constant channel never divides by zero
