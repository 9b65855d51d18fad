"""Tests for fl_lessons.training: seeding, SGD, the full-batch gradient and clinical metrics."""

import copy
import math
import random

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fl_lessons.models import get_flat_weights, make_model
from fl_lessons.training import (
    classification_metrics,
    evaluate,
    full_batch_gradient,
    roc_auc,
    set_seed,
    sgd_epochs,
    train,
)


def brute_force_auc(scores, labels):
    """Over every (sick, healthy) pair: 1 if the sick one scores higher, 1/2 for a tie."""
    positives = [s for s, y in zip(scores, labels) if y == 1]
    negatives = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def random_images(num_images, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(num_images, 1, 28, 28, generator=generator, dtype=dtype)
    labels = (torch.rand(num_images, generator=generator) < 0.4).to(dtype)
    return images, labels


def separable_images(num_images=64, seed=0):
    """Pneumonia brightens the left half of the image: a linear model can learn it."""
    images, labels = random_images(num_images, seed)
    images = 0.5 * images
    images[:, :, :, :14] += 0.4 * labels.view(-1, 1, 1, 1)
    return images, labels


# ---------------------------------------------------------------------------------------
# ROC AUC and clinical metrics
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    # Rounded scores tie often; the sick score a little higher on average.
    scores = np.round(rng.uniform(0, 1, 60) + 0.2 * labels, 1)
    assert len(np.unique(scores)) < 20
    assert roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)


def test_roc_auc_hand_example_with_a_tie():
    # Sick: 0.9, 0.4. Healthy: 0.4, 0.1. Pairs: 0.9>0.4 (1), 0.9>0.1 (1), 0.4=0.4 (1/2),
    # 0.4>0.1 (1): 3.5 of 4 pairs, AUC = 0.875.
    assert roc_auc(np.array([0.9, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(0.875)


def test_roc_auc_ignores_input_order():
    scores, labels = np.array([0.9, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])
    order = np.array([2, 0, 3, 1])
    assert roc_auc(scores[order], labels[order]) == pytest.approx(0.875)


def test_roc_auc_limits():
    labels = np.array([0, 1, 0, 1, 1, 0])
    assert roc_auc(np.full(6, 0.3), labels) == 0.5
    assert roc_auc(labels * 2.0 - 1.0, labels) == 1.0
    assert roc_auc(1.0 - labels, labels) == 0.0


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0], []])
def test_roc_auc_is_nan_with_one_class(labels):
    assert math.isnan(roc_auc(np.linspace(0, 1, len(labels)), np.array(labels)))


def test_classification_metrics_hand_example():
    logits = np.array([1.5, 0.2, -0.4, 0.0, -2.0, 0.7, -0.1])
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    # Predicted sick (logit > 0, so 0.0 counts as healthy): images 0, 1, 5.
    # Sick 0, 1, 2: caught 0 and 1, sensitivity 2/3. Healthy 3, 4, 5, 6: cleared 3, 4, 6,
    # specificity 3/4. Correct: 0, 1, 3, 4, 6, accuracy 5/7.
    # AUC: 1.5 beats all 4 healthy, 0.2 beats 0.0, -2.0, -0.1 (3), -0.4 beats -2.0 (1):
    # 8 of 12 pairs, 2/3.
    metrics = classification_metrics(logits, labels, loss=0.25)
    assert metrics.sensitivity == pytest.approx(2 / 3)
    assert metrics.specificity == pytest.approx(3 / 4)
    assert metrics.accuracy == pytest.approx(5 / 7)
    assert metrics.auc == pytest.approx(2 / 3)
    assert metrics.loss == 0.25
    assert set(metrics.as_dict()) == {"accuracy", "sensitivity", "specificity", "auc", "loss"}


def test_classification_metrics_without_sick_patients():
    metrics = classification_metrics(np.array([-1.0, 2.0]), np.array([0, 0]))
    assert math.isnan(metrics.sensitivity) and math.isnan(metrics.auc)
    assert metrics.specificity == 0.5
    assert math.isnan(metrics.loss)


def test_evaluate_matches_independent_computation():
    model = make_model("cnn", seed=0)
    images, labels = random_images(40, seed=1)
    model.train()
    metrics = evaluate(model, images, labels)
    assert model.training  # evaluate restores the mode it found
    with torch.no_grad():
        logits = model(images)
    expected_loss = torch.nn.BCEWithLogitsLoss()(logits, labels).item()
    # The same loss from its definition: log(1 + e^z) - y z.
    z, y = logits.double().numpy(), labels.double().numpy()
    by_hand = np.mean(np.logaddexp(0, z) - y * z)
    assert metrics.loss == pytest.approx(expected_loss, rel=1e-6)
    assert metrics.loss == pytest.approx(by_hand, rel=1e-5)
    assert metrics.accuracy == pytest.approx(float(((logits > 0).float() == labels).float().mean()))
    assert metrics.auc == pytest.approx(brute_force_auc(logits.numpy(), labels.numpy()))


def test_evaluate_refuses_an_empty_test_set():
    with pytest.raises(ValueError, match="empty test set"):
        evaluate(make_model("logreg"), torch.zeros(0, 1, 28, 28), torch.zeros(0))


# ---------------------------------------------------------------------------------------
# Seeding and SGD
# ---------------------------------------------------------------------------------------


def draw_everything():
    return torch.rand(3), np.random.rand(3), random.random()


def test_set_seed_makes_all_three_generators_repeat():
    set_seed(123)
    first = draw_everything()
    set_seed(123)
    again = draw_everything()
    set_seed(124)
    other = draw_everything()
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])
    assert np.array_equal(first[1], again[1]) and not np.array_equal(first[1], other[1])
    assert first[2] == again[2] and first[2] != other[2]


def trained_weights(seed, epochs=1):
    model = make_model("cnn", seed=0)
    images, labels = random_images(24, seed=3)
    train(model, images, labels, epochs=epochs, batch_size=8, lr=0.05, seed=seed, progress=False)
    return get_flat_weights(model)


def test_train_is_reproducible_from_the_seed():
    first, again, other = trained_weights(seed=1), trained_weights(seed=1), trained_weights(seed=2)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, get_flat_weights(make_model("cnn", seed=0)))


def test_minibatch_sgd_matches_manual_steps_over_the_shuffle():
    model = make_model("logreg", seed=0, dtype=torch.float64)
    manual = copy.deepcopy(model)
    images, labels = random_images(21, seed=4, dtype=torch.float64)
    batch_size, lr = 8, 0.3  # 21 = 8 + 8 + 5: the last, smaller batch must count too
    losses = sgd_epochs(model, images, labels, epochs=1, batch_size=batch_size, lr=lr,
                        generator=torch.Generator().manual_seed(9))
    order = torch.randperm(21, generator=torch.Generator().manual_seed(9))
    weighted_losses = []
    for start in range(0, 21, batch_size):
        batch = order[start:start + batch_size]
        loss = F.binary_cross_entropy_with_logits(manual(images[batch]), labels[batch])
        gradients = torch.autograd.grad(loss, list(manual.parameters()))
        with torch.no_grad():
            for parameter, gradient in zip(manual.parameters(), gradients):
                parameter -= lr * gradient
        weighted_losses.append(loss.item() * len(batch))
    assert torch.allclose(get_flat_weights(model), get_flat_weights(manual), rtol=0, atol=1e-12)
    assert losses == [pytest.approx(sum(weighted_losses) / 21)]


def test_a_few_epochs_lower_the_loss_on_a_separable_problem():
    model = make_model("logreg", seed=0)
    images, labels = separable_images()
    before = evaluate(model, images, labels)
    losses = train(model, images, labels, epochs=4, batch_size=16, lr=0.5, seed=0, progress=False)
    after = evaluate(model, images, labels)
    assert len(losses) == 4
    assert losses[-1] < 0.5 * losses[0]
    assert after.loss < 0.5 * before.loss
    assert after.accuracy > 0.95


def manual_gradient_step(model, images, labels, lr):
    """w - lr * grad of the mean loss over all the data, by plain autograd."""
    copy_of_model = copy.deepcopy(model)
    parameters = list(copy_of_model.parameters())
    loss = torch.nn.BCEWithLogitsLoss()(copy_of_model(images), labels)
    gradients = torch.autograd.grad(loss, parameters)
    step = torch.cat([gradient.reshape(-1) for gradient in gradients])
    return get_flat_weights(model) - lr * step, loss.item()


@pytest.mark.parametrize("name, num_images", [("cnn", 20), ("logreg", 1100)])
@pytest.mark.parametrize("batch_size", [math.inf, "n"])
def test_full_batch_epoch_is_one_gradient_descent_step(name, num_images, batch_size):
    # 1100 images exceed the 512-image chunk, so the full-batch step is computed in pieces.
    model = make_model(name, seed=0, dtype=torch.float64)
    images, labels = random_images(num_images, seed=5, dtype=torch.float64)
    expected_weights, expected_loss = manual_gradient_step(model, images, labels, lr=0.2)
    batch_size = num_images if batch_size == "n" else batch_size
    losses = sgd_epochs(model, images, labels, epochs=1, batch_size=batch_size, lr=0.2)
    assert torch.allclose(get_flat_weights(model), expected_weights, rtol=1e-10, atol=1e-12)
    assert losses == [pytest.approx(expected_loss, rel=1e-10)]


def test_full_batch_gradient_in_chunks_equals_unchunked():
    model = make_model("cnn", seed=0, dtype=torch.float64)
    images, labels = random_images(20, seed=6, dtype=torch.float64)
    whole, whole_loss = full_batch_gradient(model, images, labels, chunk_size=20)
    chunked, chunked_loss = full_batch_gradient(model, images, labels, chunk_size=6)  # 3x6 + 2
    _, expected_loss = manual_gradient_step(model, images, labels, lr=0.0)
    for a, b in zip(whole, chunked, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    assert chunked_loss == pytest.approx(whole_loss, rel=1e-12)
    assert whole_loss == pytest.approx(expected_loss, rel=1e-12)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"epochs": 0}, r"epochs \(L\) must be at least 1, got 0"),
        ({"lr": 0.0}, r"learning rate eta \(lr\) must be > 0, got 0.0"),
        ({"lr": -0.1}, r"learning rate eta \(lr\) must be > 0, got -0.1"),
        ({"batch_size": 0}, r"batch size B must be at least 1 \(or math.inf for full batch\), got 0"),
        ({"batch_size": math.nan}, r"batch size B must be at least 1"),
    ],
)
def test_invalid_sgd_settings_are_refused(settings, message):
    model = make_model("logreg", seed=0)
    images, labels = random_images(8, seed=0)
    before = get_flat_weights(model)
    arguments = {"epochs": 1, "batch_size": 4, "lr": 0.1} | settings
    with pytest.raises(ValueError, match=message):
        train(model, images, labels, progress=False, **arguments)
    with pytest.raises(ValueError, match=message):
        sgd_epochs(model, images, labels, **arguments)
    assert torch.equal(get_flat_weights(model), before)


@pytest.mark.parametrize("batch_size", [8, math.inf])
def test_training_on_no_examples_is_refused_clearly(batch_size):
    with pytest.raises(ValueError, match=r"(?i)empty|no (training )?examples"):
        sgd_epochs(make_model("logreg"), torch.zeros(0, 1, 28, 28), torch.zeros(0), 1, batch_size, 0.1)
