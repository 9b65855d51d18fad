"""The course's models and the flat-weight view of them that federated learning sends around.

Taught in notebook 01 (the models, their size in bytes) and notebook 02 onwards (weights as
one flat vector w, the unit of communication).

Both models output one logit per image: pneumonia if the logit is above 0. Neither has
buffers (no batch norm), so the parameters are the whole state a client and server exchange.
"""

from __future__ import annotations

import torch
from torch import nn

from .data import IMAGE_SIZE


PIXEL_MEAN = 0.35
PIXEL_STD = 0.2


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with max-pooling, then two fully connected layers.

    About 26 thousand parameters (roughly 100 kB as float32): small enough that a laptop
    trains it in seconds, large enough to beat a linear model on chest X-rays.
    """

    def __init__(self, channels: tuple[int, int] = (8, 16), hidden: int = 32):
        super().__init__()
        first, second = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, first, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(first, second, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(second * (IMAGE_SIZE // 4) ** 2, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A fixed shift and scale to roughly zero mean, unit spread: SGD then trains
        # in a few epochs instead of a few dozen. Fixed, so clients share nothing extra.
        standardized = (images - PIXEL_MEAN) / PIXEL_STD
        return self.classifier(self.features(standardized)).squeeze(-1)


class LogisticRegression(nn.Module):
    """One weight per pixel plus a bias: the linear baseline."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(IMAGE_SIZE * IMAGE_SIZE, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.linear(images.flatten(1)).squeeze(-1)


MODELS = {"cnn": SmallCNN, "logreg": LogisticRegression}


def make_model(name: str = "cnn", seed: int | None = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build a fresh model with reproducible initial weights.

    Parameters
    ----------
    name : ``"cnn"`` (:class:`SmallCNN`) or ``"logreg"`` (:class:`LogisticRegression`).
    seed : seeds the initial weights (``None`` leaves the global random state alone).
    dtype : ``torch.float32`` for training, ``torch.float64`` for exactness checks.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.")
    if seed is not None:
        torch.manual_seed(seed)
    return MODELS[name]().to(dtype)


def num_parameters(model: nn.Module) -> int:
    """How many numbers describe the model: the length of its flat weight vector w."""
    return sum(parameter.numel() for parameter in model.parameters())


def model_size_bytes(model: nn.Module) -> int:
    """Bytes needed to send the model's weights once: the unit of communication."""
    return sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())


def get_flat_weights(model: nn.Module) -> torch.Tensor:
    """A copy of all the model's parameters as one flat vector w.

    Parameters
    ----------
    model : the model to read.
    """
    with torch.no_grad():
        return torch.cat([parameter.reshape(-1) for parameter in model.parameters()])


def set_flat_weights(model: nn.Module, weights: torch.Tensor) -> None:
    """Copy a flat vector w into the model's parameters (the vector is not aliased).

    Parameters
    ----------
    model : the model to write into.
    weights : a vector of length :func:`num_parameters`.
    """
    expected = num_parameters(model)
    if weights.ndim != 1 or weights.numel() != expected:
        raise ValueError(
            f"Expected a flat weight vector of {expected} numbers, got shape {tuple(weights.shape)}."
        )
    offset = 0
    with torch.no_grad():
        for parameter in model.parameters():
            size = parameter.numel()
            parameter.copy_(weights[offset:offset + size].view_as(parameter))
            offset += size
