"""Seeding, training with plain SGD on in-memory tensors, and the metrics clinicians read.

Taught in notebook 01 (centralized training). The same :func:`sgd_epochs` is what every
client runs locally in FedAvg (notebook 04), so "centralized" and "local" training are one
implementation.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

# Forward passes over more than a few hundred images get slower per image on a CPU (the
# activations leave the cache), so large batches are processed in chunks of this size.
CHUNK_SIZE = 512

# The course's defaults for SGD, shared by centralized training and FedAvg clients.
DEFAULT_LR = 0.1
DEFAULT_BATCH_SIZE = 32


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and PyTorch, so an experiment gives the same numbers every run.

    Parameters
    ----------
    seed : any integer.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def loss_fn(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy of the model's logits: the loss f_i averaged over examples.

    Parameters
    ----------
    model : the model.
    features, labels : a batch of images and their 0/1 labels.
    """
    return F.binary_cross_entropy_with_logits(model(features), labels.to(features.dtype))


def full_batch_gradient(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, chunk_size: int = CHUNK_SIZE
) -> tuple[list[torch.Tensor], float]:
    """The gradient of the mean loss over all the data, and that mean loss.

    Parameters
    ----------
    model : the model.
    features, labels : all the data (the gradient is exactly that of the full batch).
    chunk_size : examples per forward pass; the chunks' gradients are summed, weighted by size.
    """
    num_examples = labels.shape[0]
    if num_examples == 0:
        raise ValueError("Cannot compute a gradient over an empty dataset (no examples).")
    parameters = list(model.parameters())
    total = [torch.zeros_like(parameter) for parameter in parameters]
    loss_sum = 0.0
    for start in range(0, num_examples, chunk_size):
        chunk_x, chunk_y = features[start:start + chunk_size], labels[start:start + chunk_size]
        share = chunk_y.shape[0] / num_examples
        loss = loss_fn(model, chunk_x, chunk_y)
        for accumulated, gradient in zip(total, torch.autograd.grad(loss, parameters)):
            accumulated.add_(gradient, alpha=share)
        loss_sum += loss.item() * chunk_y.shape[0]
    return total, loss_sum / num_examples


def _check_sgd_settings(epochs: int, batch_size: float, lr: float) -> None:
    if epochs < 1:
        raise ValueError(f"The number of epochs (L) must be at least 1, got {epochs}.")
    if not batch_size >= 1:
        raise ValueError(f"The batch size B must be at least 1 (or math.inf for full batch), got {batch_size}.")
    if not lr > 0:
        raise ValueError(f"The learning rate eta (lr) must be > 0, got {lr}.")


def _sgd_step(parameters: list[torch.Tensor], gradients, lr: float) -> None:
    """w <- w - eta * gradient, in place."""
    with torch.no_grad():
        for parameter, gradient in zip(parameters, gradients):
            parameter.add_(gradient, alpha=-lr)


def sgd_epochs(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: float,
    lr: float,
    generator: torch.Generator | None = None,
    progress: tqdm | None = None,
    adjust_gradients: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]] | None = None,
) -> list[float]:
    """Plain minibatch SGD, in place on ``model``: the loop a FedAvg client runs locally.

    Parameters
    ----------
    model : trained in place.
    features, labels : the training data, as in-memory tensors.
    epochs : passes over the data (L in FedAvg).
    batch_size : B; ``math.inf`` (or anything >= n) means one full-batch step per epoch.
    lr : the learning rate eta.
    generator : shuffles the minibatches; seed it for reproducible runs.
    progress : an optional tqdm bar, advanced once per epoch.
    adjust_gradients : changes each step's gradients (one per parameter) before the step;
        FedProx adds its proximal term here (notebook 06). None: plain SGD.

    Returns the mean training loss of each epoch (over the minibatches, weighted by size).
    """
    _check_sgd_settings(epochs, batch_size, lr)
    num_examples = labels.shape[0]
    if num_examples == 0:
        raise ValueError("Cannot train on an empty dataset (no examples): give the model some data.")
    full_batch = batch_size >= num_examples
    step = int(min(batch_size, num_examples))
    parameters = [parameter for parameter in model.parameters()]
    epoch_losses = []
    for _ in range(epochs):
        if full_batch:
            # One gradient-descent step on all the data: no shuffle needed.
            gradients, epoch_loss = full_batch_gradient(model, features, labels)
            if adjust_gradients is not None:
                gradients = adjust_gradients(gradients)
            _sgd_step(parameters, gradients, lr)
            epoch_losses.append(epoch_loss)
        else:
            order = torch.randperm(num_examples, generator=generator)
            loss_sum = 0.0
            for start in range(0, num_examples, step):
                batch = order[start:start + step]
                loss = loss_fn(model, features[batch], labels[batch])
                gradients = torch.autograd.grad(loss, parameters)
                if adjust_gradients is not None:
                    gradients = adjust_gradients(gradients)
                _sgd_step(parameters, gradients, lr)
                loss_sum += loss.item() * batch.shape[0]
            epoch_losses.append(loss_sum / num_examples)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{epoch_losses[-1]:.3f}")
    return epoch_losses


def train(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 10,
    batch_size: float = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    progress: bool = True,
    desc: str = "training",
) -> list[float]:
    """Centralized training: SGD on pooled (or one hospital's) data, with a progress bar.

    Parameters
    ----------
    model : trained in place.
    features, labels : the training data.
    epochs : passes over the data.
    batch_size : B (``math.inf`` for full-batch gradient descent).
    lr : the learning rate eta.
    seed : seeds the minibatch order.
    progress : show a tqdm progress bar.
    desc : the bar's label.

    Returns the mean training loss of each epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    with tqdm(total=epochs, desc=desc, disable=not progress, leave=False) as bar:
        return sgd_epochs(model, features, labels, epochs, batch_size, lr, generator, bar)


@torch.no_grad()
def predict_logits(model: nn.Module, features: torch.Tensor, batch_size: int = CHUNK_SIZE) -> torch.Tensor:
    """The model's logits for every image, computed in large batches without gradients.

    Parameters
    ----------
    model : the model.
    features : the images.
    batch_size : images per forward pass.
    """
    return torch.cat([model(features[start:start + batch_size])
                      for start in range(0, features.shape[0], batch_size)])


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random sick patient scores above a random healthy one.

    Parameters
    ----------
    scores : higher means "more likely pneumonia".
    labels : 1 for pneumonia, 0 for normal.

    Computed as the Mann-Whitney statistic with average ranks, so a tie counts one half.
    Returns NaN when only one class is present (the AUC is then undefined).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    num_positive, num_negative = int(labels.sum()), int((~labels).sum())
    if num_positive == 0 or num_negative == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Tied scores share the average of the ranks they occupy.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average_rank, counts)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - num_positive * (num_positive + 1) / 2) / (num_positive * num_negative))


@dataclass(frozen=True)
class Metrics:
    """What a clinician reads off a classifier, on one test set."""

    accuracy: float
    sensitivity: float  # of the sick, the fraction caught (true positive rate)
    specificity: float  # of the healthy, the fraction cleared (true negative rate)
    auc: float
    loss: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, loss: float = math.nan) -> Metrics:
    """Accuracy, sensitivity, specificity and AUC of logits against 0/1 labels.

    Parameters
    ----------
    logits : one score per image; a logit above 0 means "pneumonia".
    labels : the true 0/1 labels.
    loss : the mean loss, if already computed.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    truth = np.asarray(labels).reshape(-1).astype(bool)
    predicted = logits > 0
    true_positive = int((predicted & truth).sum())
    true_negative = int((~predicted & ~truth).sum())
    num_positive, num_negative = int(truth.sum()), int((~truth).sum())
    return Metrics(
        accuracy=(true_positive + true_negative) / max(len(truth), 1),
        sensitivity=true_positive / num_positive if num_positive else math.nan,
        specificity=true_negative / num_negative if num_negative else math.nan,
        auc=roc_auc(logits, truth),
        loss=loss,
    )


def evaluate(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> Metrics:
    """Evaluate a model on a test set: accuracy, sensitivity, specificity, ROC AUC and loss.

    Parameters
    ----------
    model : the model.
    features, labels : the test images and their 0/1 labels.
    """
    if labels.shape[0] == 0:
        raise ValueError("Cannot evaluate on an empty test set.")
    was_training = model.training
    model.eval()
    logits = predict_logits(model, features)
    model.train(was_training)
    loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype)).item()
    return classification_metrics(logits.numpy(), labels.numpy(), loss)
