"""The four Flatten CNNs of the seed article, built with backend-agnostic Keras 3.

Every model takes uint8 pixels and scales them itself (a Rescaling layer), so
stored data stays uint8 and prediction can never skip the scaling. The output
layer follows the labels: one sigmoid unit for two classes, softmax otherwise.
"""

import keras
from keras import layers

from pipeline.errors import PipelineError


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Build (uncompiled) the model `name` for (H, W, C) uint8 inputs."""
    if name == "multi_input":
        # It needs a second, colour view of each image, which prepare does not write yet.
        raise PipelineError(
            "train.model = 'multi_input' needs the second (32x32 colour) view of each image, "
            "which prepare does not produce yet; choose sequential, functional or shared_input"
        )
    builders = {"sequential": _sequential, "functional": _functional, "shared_input": _shared_input}
    return builders[name](input_shape, num_classes)


def _output(num_classes: int) -> layers.Dense:
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", name="output")
    return layers.Dense(num_classes, activation="softmax", name="output")


def _sequential(input_shape, num_classes) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input(shape=input_shape, dtype="uint8"),
            layers.Rescaling(1 / 255),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Conv2D(32, 3, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            _output(num_classes),
        ],
        name="sequential",
    )


def _functional(input_shape, num_classes) -> keras.Model:
    inputs = keras.Input(shape=input_shape, dtype="uint8")
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(32, 4, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(16, 4, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(10, activation="relu")(x)
    return keras.Model(inputs, _output(num_classes)(x), name="functional")


def _shared_input(input_shape, num_classes) -> keras.Model:
    """Two branches with different kernel sizes read the same input."""
    inputs = keras.Input(shape=input_shape, dtype="uint8")
    scaled = layers.Rescaling(1 / 255)(inputs)
    branches = []
    for filters, kernel_size in ((32, 4), (16, 8)):
        x = layers.Conv2D(filters, kernel_size, activation="relu")(scaled)
        x = layers.MaxPooling2D(2)(x)
        branches.append(layers.Flatten()(x))
    x = layers.Concatenate()(branches)
    x = layers.Dense(10, activation="relu")(x)
    return keras.Model(inputs, _output(num_classes)(x), name="shared_input")


def compile_model(model: keras.Model, num_classes: int, learning_rate: float) -> None:
    if num_classes == 2:
        loss, accuracy = "binary_crossentropy", keras.metrics.BinaryAccuracy(name="accuracy")
    else:
        loss, accuracy = (
            "categorical_crossentropy",
            keras.metrics.CategoricalAccuracy(name="accuracy"),
        )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=loss,
        metrics=[accuracy],
    )
