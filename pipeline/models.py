"""The four Flatten CNNs of the seed article, built with backend-agnostic Keras 3.

Every model takes uint8 pixels and standardises them itself (a Normalization
layer holding each channel's mean and variance over the training split), so
stored data stays uint8 and prediction can never skip the scaling. Standardised
inputs, not the article's pixels / 255, are what let the three narrow models
learn at all (README, "The models", has the figures). The output layer follows
the labels: one sigmoid unit for a 0/1 column, softmax over a one-hot encoding
otherwise. Augmentation layers, when params ask for them, come
right after the scaling; Keras runs them in training only.

MODELS, at the end, is the one table of models: params validation, the tests
and the README's model table all derive from it. Keras is imported inside the
builders, so that reading the table (params does, for `imgpipe --help` and
ingest too) never loads a backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import keras

    from pipeline.params import Augment


# The article's 10 hidden units starve the three narrow models: with 10, a run often
# ends with every unit dead and the loss at chance (README, "The models").
HIDDEN = 64


class Moments(NamedTuple):
    """Each channel's mean and variance of one input's pixels (0-255) over the training split."""

    mean: tuple[float, ...]
    variance: tuple[float, ...]


def uniform_moments(channels: int) -> Moments:
    """The moments of pixels spread evenly over 0-255: for a model built before any data."""
    return Moments((127.5,) * channels, (127.5**2 / 3,) * channels)


class _Input(NamedTuple):
    shape: tuple[int, int, int]
    moments: Moments


def build_model(
    name: str,
    input_shapes: list[tuple[int, int, int]],
    units: int,
    augment: Augment | None = None,
    moments: list[Moments] | None = None,
) -> keras.Model:
    """Build (uncompiled) the model `name` for (H, W, C) uint8 inputs and `units` outputs,
    standardising each input by its `moments` (train passes the training split's)."""
    model = MODELS[name]
    shapes = input_shapes[: model.inputs]
    moments = moments or [uniform_moments(shape[-1]) for shape in shapes]
    inputs = [_Input(shape, m) for shape, m in zip(shapes, moments, strict=False)]
    return model.build(*inputs, units=units, augment=augment)


def _augmentation(augment: Augment | None) -> list[keras.layers.Layer]:
    from keras import layers

    if augment is None:
        return []
    chosen = []
    if augment.horizontal_flip:
        chosen.append(layers.RandomFlip("horizontal"))
    if augment.zoom:
        chosen.append(layers.RandomZoom(augment.zoom))
    if augment.shift:
        chosen.append(layers.RandomTranslation(augment.shift, augment.shift))
    return chosen


def _standardised(given: _Input) -> keras.layers.Normalization:
    from keras import layers

    return layers.Normalization(mean=given.moments.mean, variance=given.moments.variance)


def _scaled(given: _Input, augment: Augment | None):
    """The model's uint8 input, standardised and augmented: (input, tensor to build on)."""
    import keras

    inputs = keras.Input(shape=given.shape, dtype="uint8")
    x = _standardised(given)(inputs)
    for layer in _augmentation(augment):
        x = layer(x)
    return inputs, x


def _output(units: int) -> keras.layers.Dense:
    from keras import layers

    # float32 even under mixed precision: softmax and the loss need its range.
    activation = "sigmoid" if units == 1 else "softmax"
    return layers.Dense(units, activation=activation, dtype="float32", name="output")


def _sequential(given: _Input, units, augment) -> keras.Model:
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=given.shape, dtype="uint8"),
            _standardised(given),
            *_augmentation(augment),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            _output(units),
        ],
        name="sequential",
    )


def _functional(given: _Input, units, augment) -> keras.Model:
    import keras
    from keras import layers

    inputs, x = _scaled(given, augment)
    x = layers.Conv2D(32, 4, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 4, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(HIDDEN, activation="relu")(x)
    return keras.Model(inputs, _output(units)(x), name="functional")


def _shared_input(given: _Input, units, augment) -> keras.Model:
    """Two branches with different kernel sizes read the same input."""
    import keras
    from keras import layers

    inputs, scaled = _scaled(given, augment)
    branches = []
    for filters, kernel_size in ((32, 4), (16, 8)):
        x = layers.Conv2D(filters, kernel_size, activation="relu")(scaled)
        x = layers.MaxPooling2D(2)(x)
        branches.append(layers.Flatten()(x))
    x = layers.Concatenate()(branches)
    x = layers.Dense(HIDDEN, activation="relu")(x)
    return keras.Model(inputs, _output(units)(x), name="shared_input")


def _multi_input(gray: _Input, colour: _Input, units, augment) -> keras.Model:
    """Two views of the same image, each through its own convolutions, then merged.

    Each view is augmented on its own draw, so a flip may differ between them.
    """
    import keras
    from keras import layers

    inputs, branches = [], []
    for view in (gray, colour):
        view_input, x = _scaled(view, augment)
        inputs.append(view_input)
        x = layers.Conv2D(32, 4, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.Conv2D(16, 4, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        branches.append(layers.Flatten()(x))
    x = layers.Concatenate()(branches)
    x = layers.Dense(HIDDEN, activation="relu")(x)
    x = layers.Dense(HIDDEN, activation="relu")(x)
    return keras.Model(inputs, _output(units)(x), name="multi_input")


def loss_for(units: int) -> str:
    """The training loss: binary cross-entropy for one sigmoid unit, else categorical."""

    return "binary_crossentropy" if units == 1 else "categorical_crossentropy"


def compile_model(
    model: keras.Model, units: int, learning_rate: float, steps_per_execution: int = 1
) -> None:
    import keras

    if units == 1:
        accuracy = keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        accuracy = keras.metrics.CategoricalAccuracy(name="accuracy")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss_for(units),
        metrics=[accuracy],
        steps_per_execution=steps_per_execution,
    )


class Model(NamedTuple):
    """A registered model: what builds it, how many views it reads, its body (README's)."""

    build: Callable[..., keras.Model]
    inputs: int
    body: str


MODELS = {
    "sequential": Model(
        _sequential,
        1,
        "Conv2D(32,3)→MaxPool(2)→Conv2D(32,3)→MaxPool(2)→Flatten→Dense(128)→out",
    ),
    "functional": Model(
        _functional, 1, f"Conv2D(32,4)→MaxPool→Conv2D(16,4)→MaxPool→Flatten→Dense({HIDDEN})→out"
    ),
    "shared_input": Model(
        _shared_input,
        1,
        "two branches on one input, Conv2D(32,4) and Conv2D(16,8), each →MaxPool→Flatten, "
        f"concatenated→Dense({HIDDEN})→out",
    ),
    "multi_input": Model(
        _multi_input,
        2,
        "two views of each image (64×64 gray and 32×32 colour by default), each "
        f"Conv2D(32,4)→MaxPool→Conv2D(16,4)→MaxPool→Flatten, concatenated→Dense({HIDDEN})→"
        f"Dense({HIDDEN})→out",
    ),
}
