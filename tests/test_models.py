"""The seed article's CNNs build for any input shape and fit the label mode."""

import keras
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.models import build_model, compile_model


@pytest.mark.parametrize("name", ["sequential", "functional", "shared_input"])
@pytest.mark.parametrize("input_shape", [(32, 32, 1), (64, 48, 3)])
@pytest.mark.parametrize("num_classes, units", [(2, 1), (3, 3)])
def test_models_build_scale_their_input_and_fit_the_labels(name, input_shape, num_classes, units):
    model = build_model(name, input_shape, num_classes)
    assert model.name == name
    assert model.input_shape == (None, *input_shape)
    assert model.output_shape == (None, units)
    assert any(isinstance(layer, keras.layers.Flatten) for layer in model.layers) or name == (
        "shared_input"
    )
    # uint8 in, probabilities out: the scaling is inside the model.
    pixels = np.full((2, *input_shape), 255, np.uint8)
    probabilities = np.asarray(model(pixels))
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    if units > 1:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_the_sequential_body_is_the_articles():
    model = build_model("sequential", (64, 64, 1), 10)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "Rescaling", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Flatten", "Dense", "Dense"
    ]  # fmt: skip
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [32, 32]


def test_shared_input_has_two_branches_on_one_input():
    model = build_model("shared_input", (64, 64, 1), 2)
    convolutions = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.kernel_size for c in convolutions] == [(4, 4), (8, 8)]
    assert len(model.inputs) == 1


def test_compiled_loss_follows_the_label_mode():
    for num_classes, loss in [(2, "binary_crossentropy"), (5, "categorical_crossentropy")]:
        model = build_model("functional", (32, 32, 1), num_classes)
        compile_model(model, num_classes, learning_rate=0.01)
        assert model.loss == loss


def test_multi_input_is_refused_with_a_reason_until_prepare_writes_its_second_view():
    with pytest.raises(PipelineError, match="second .* view"):
        build_model("multi_input", (64, 64, 1), 2)
