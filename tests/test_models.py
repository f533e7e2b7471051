"""The seed article's CNNs build for any input shape and fit the label encoding."""

import keras
import numpy as np
import pytest

from pipeline.models import HIDDEN, MODELS, Moments, build_model, compile_model
from pipeline.params import Augment
from tests.conftest import REPO

GRAY, COLOUR = (64, 48, 1), (32, 32, 3)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("units", [1, 3])
def test_models_build_scale_their_input_and_fit_the_labels(name, units):
    model = build_model(name, [GRAY, COLOUR], units)
    assert model.name == name
    assert len(model.inputs) == MODELS[name].inputs
    assert model.output_shape == (None, units)
    assert any(isinstance(layer, keras.layers.Flatten) for layer in model.layers)
    # uint8 in, probabilities out: the scaling is inside the model.
    pixels = [
        np.full((2, *shape), 255, np.uint8) for shape in (GRAY, COLOUR)[: MODELS[name].inputs]
    ]
    probabilities = np.asarray(model(pixels[0] if len(pixels) == 1 else pixels))
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    if units > 1:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_the_sequential_body_is_the_articles():
    model = build_model("sequential", [(64, 64, 1)], 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Normalization", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
                     "Flatten", "Dense", "Dense"]  # fmt: skip
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [32, 32]


def test_shared_input_has_two_branches_on_one_input():
    model = build_model("shared_input", [(64, 64, 1)], 1)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.kernel_size for c in convolutions] == [(4, 4), (8, 8)]
    assert len(model.inputs) == 1


def test_multi_input_reads_a_gray_and_a_colour_view():
    model = build_model("multi_input", [(64, 64, 1), (32, 32, 3)], 1)
    assert [tuple(i.shape[1:]) for i in model.inputs] == [(64, 64, 1), (32, 32, 3)]
    dense = [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense == [HIDDEN, HIDDEN, 1]


def test_compiled_loss_follows_the_label_encoding():
    for units, loss in [(1, "binary_crossentropy"), (5, "categorical_crossentropy")]:
        model = build_model("functional", [(32, 32, 1)], units)
        compile_model(model, units, learning_rate=0.01)
        assert model.loss == loss


def test_augmentation_changes_images_in_training_only():
    augment = Augment(horizontal_flip=True, zoom=0.3, shift=0.2)
    model = build_model("functional", [(32, 32, 1)], 3, augment)
    kinds = [type(layer).__name__ for layer in model.layers][:5]
    assert kinds == ["InputLayer", "Normalization", "RandomFlip", "RandomZoom", "RandomTranslation"]
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 1), np.uint8)
    inference = [np.asarray(model(pixels, training=False)) for _ in range(2)]
    np.testing.assert_array_equal(*inference)
    assert not np.allclose(np.asarray(model(pixels, training=True)), inference[0])
    plain = build_model(
        "functional", [(32, 32, 1)], 3, Augment(horizontal_flip=False, zoom=0, shift=0)
    )
    assert not any("Random" in type(layer).__name__ for layer in plain.layers)


def test_the_readme_model_table_is_the_registry():
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| `train.model` | body |") :].split("\n\n")[0].splitlines()[2:]
    rows = [line.strip("|").split(" | ") for line in table]
    assert [(name.strip().strip("`"), body.strip()) for name, body in rows] == [
        (name, model.body) for name, model in MODELS.items()
    ]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_standardises_each_of_its_inputs_by_the_moments_given(name):
    moments = [Moments((100.0,), (400.0,)), Moments((10.0, 20.0, 30.0), (4.0, 9.0, 16.0))]
    model = build_model(name, [GRAY, COLOUR], 3, moments=moments)
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    assert len(layers) == MODELS[name].inputs  # one per input, none skipped
    for layer, given in zip(layers, moments, strict=False):
        pixels = np.full((1, 2, 2, len(given.mean)), 120, np.uint8)
        expected = (120 - np.array(given.mean)) / np.sqrt(given.variance)
        np.testing.assert_allclose(np.asarray(layer(pixels))[0, 0, 0], expected, rtol=1e-5)
