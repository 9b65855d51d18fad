"""Tests for fl_lessons.models: the two models, their size, and the flat weight vector w."""

import pytest
import torch

from fl_lessons.models import (
    LogisticRegression,
    SmallCNN,
    get_flat_weights,
    make_model,
    model_size_bytes,
    num_parameters,
    set_flat_weights,
)


def count_parameters_independently(model):
    total = 0
    for parameter in model.parameters():
        size = 1
        for dimension in parameter.shape:
            size *= dimension
        total += size
    return total


def test_small_cnn_has_tens_of_thousands_of_parameters():
    model = SmallCNN()
    assert num_parameters(model) == count_parameters_independently(model)
    assert 10_000 <= num_parameters(model) < 100_000


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", ["cnn", "logreg"])
def test_models_give_one_logit_per_image(name, batch):
    model = make_model(name, seed=0)
    logits = model(torch.rand(batch, 1, 28, 28))
    assert logits.shape == (batch,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_logistic_regression_has_one_weight_per_pixel_plus_a_bias():
    assert num_parameters(LogisticRegression()) == 28 * 28 + 1


def test_logistic_regression_is_linear_in_the_pixels():
    model = make_model("logreg", seed=0, dtype=torch.float64)
    images = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    weight, bias = model.linear.weight.reshape(-1), model.linear.bias
    expected = images.reshape(3, -1) @ weight + bias
    assert torch.allclose(model(images), expected)


@pytest.mark.parametrize("name", ["cnn", "logreg"])
@pytest.mark.parametrize("dtype, bytes_per_number", [(torch.float32, 4), (torch.float64, 8)])
def test_model_size_in_bytes(name, dtype, bytes_per_number):
    model = make_model(name, seed=0, dtype=dtype)
    assert model_size_bytes(model) == bytes_per_number * count_parameters_independently(model)


@pytest.mark.parametrize("name", ["cnn", "logreg"])
def test_flat_weights_round_trip(name):
    source, target = make_model(name, seed=1), make_model(name, seed=2)
    weights = get_flat_weights(source)
    assert weights.shape == (num_parameters(source),)
    set_flat_weights(target, weights)
    for a, b in zip(source.parameters(), target.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(get_flat_weights(target), weights)
    images = torch.rand(4, 1, 28, 28)
    assert torch.equal(source(images), target(images))


def test_flat_weights_follow_parameter_order():
    model = make_model("logreg", seed=0)
    weights = get_flat_weights(model)
    assert torch.equal(weights[:784], model.linear.weight.reshape(-1))
    assert torch.equal(weights[784:], model.linear.bias)


def test_get_flat_weights_is_a_detached_copy():
    model = make_model("logreg", seed=0)
    weights = get_flat_weights(model)
    assert not weights.requires_grad
    before = model.linear.bias.detach().clone()
    weights.add_(1.0)
    assert torch.equal(model.linear.bias, before)


def test_set_flat_weights_copies_the_vector():
    model = make_model("cnn", seed=0)
    weights = torch.randn(num_parameters(model))
    set_flat_weights(model, weights)
    kept = weights.clone()
    weights.zero_()
    assert torch.equal(get_flat_weights(model), kept)


@pytest.mark.parametrize("shape", [(784,), (786,), (785, 1), (0,)])
def test_set_flat_weights_refuses_a_wrong_shape(shape):
    model = make_model("logreg", seed=0)
    with pytest.raises(ValueError, match="Expected a flat weight vector of 785 numbers, got shape"):
        set_flat_weights(model, torch.zeros(shape))


@pytest.mark.parametrize("name", ["cnn", "logreg"])
def test_make_model_is_reproducible_from_the_seed(name):
    first, again, other = (get_flat_weights(make_model(name, seed=s)) for s in (7, 7, 8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_make_model_without_seed_uses_the_global_random_state():
    torch.manual_seed(11)
    first = get_flat_weights(make_model("cnn", seed=None))
    torch.manual_seed(11)
    again = get_flat_weights(make_model("cnn", seed=None))
    second_draw = get_flat_weights(make_model("cnn", seed=None))
    assert torch.equal(first, again)
    assert not torch.equal(again, second_draw)


def test_make_model_dtype():
    model = make_model("cnn", seed=0, dtype=torch.float64)
    assert all(parameter.dtype == torch.float64 for parameter in model.parameters())
    assert torch.equal(get_flat_weights(model).float(), get_flat_weights(make_model("cnn", seed=0)))


def test_unknown_model_name_is_refused():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet'; choose one of \['cnn', 'logreg'\]"):
        make_model("resnet")


def test_models_have_no_buffers():
    # Parameters are the whole state a client sends: nothing else may hide in buffers.
    for name in ("cnn", "logreg"):
        assert list(make_model(name).buffers()) == []
