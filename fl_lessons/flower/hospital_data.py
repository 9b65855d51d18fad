"""What each process of the Flower deployment loads: one hospital's data, or the common test set.

Taught in notebook 07 (from simulation to deployment).

In the simulation of notebooks 01-06 one Python process holds every hospital
(:func:`fl_lessons.make_hospitals`). In a deployment each hospital is its own process, and
it must only ever load its own images. :func:`load_own_hospital` renders hospital k alone,
from the same independent random stream ``make_hospitals`` gives it, so hospital k's
images are identical in both worlds without the other hospitals' images ever existing in
hospital k's process. This module needs no Flower: it is plain ``fl_lessons``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..data import (
    COMMON_TEST_PER_HOSPITAL,
    DEFAULT_HOSPITALS,
    Hospital,
    HospitalSpec,
    _draw_labels,
    _to_tensors,
    make_hospitals,
    render_chest_xrays,
)
from ..federated import _is_whole_number


def course_specs(num_hospitals: int, scale: float = 1.0) -> tuple[HospitalSpec, ...]:
    """The first K of the course's hospitals, with every image count multiplied by ``scale``.

    Parameters
    ----------
    num_hospitals : K, between 1 and the number of course hospitals (5).
    scale : shrink (or grow) every hospital's training and test set; 1.0 is the course.
        Each hospital keeps at least one training image.
    """
    if not _is_whole_number(num_hospitals) or not 1 <= num_hospitals <= len(DEFAULT_HOSPITALS):
        raise ValueError(
            f"num-hospitals (K) must be a whole number from 1 to {len(DEFAULT_HOSPITALS)} "
            f"(the course has {len(DEFAULT_HOSPITALS)} hospitals), got {num_hospitals!r}."
        )
    if not scale > 0:
        raise ValueError(f"data-scale must be > 0 (1.0 is the course's size), got {scale!r}.")
    return tuple(
        replace(spec, num_train=max(1, round(spec.num_train * scale)),
                num_test=round(spec.num_test * scale))
        for spec in DEFAULT_HOSPITALS[:num_hospitals]
    )


def common_test_size(scale: float = 1.0) -> int:
    """Images each hospital's population adds to the common test set, at this ``scale``."""
    return max(1, round(COMMON_TEST_PER_HOSPITAL * scale))


def check_hospital_id(hospital_id, num_hospitals: int) -> int:
    """Return ``hospital_id`` as an int if hospital ``hospital_id`` exists among K hospitals.

    Parameters
    ----------
    hospital_id : the id a SuperNode was given in its node config.
    num_hospitals : K, the hospitals of this run (ids 0..K-1).
    """
    if not _is_whole_number(hospital_id) or not 0 <= hospital_id < num_hospitals:
        raise ValueError(
            f"hospital-id={hospital_id!r} does not exist: this federation has "
            f"num-hospitals={num_hospitals}, so the hospital ids are 0..{num_hospitals - 1}. "
            f"Start the SuperNode with --node-config 'hospital-id=<one of 0..{num_hospitals - 1}>'."
        )
    return int(hospital_id)


def load_own_hospital(
    hospital_id: int,
    specs: tuple[HospitalSpec, ...] | list[HospitalSpec] = DEFAULT_HOSPITALS,
    seed: int = 0,
    common_test_per_hospital: int = COMMON_TEST_PER_HOSPITAL,
) -> Hospital:
    """Render hospital k's images alone, equal to ``make_hospitals(seed, specs, ...).hospitals[k]``.

    Parameters
    ----------
    hospital_id : k, the index of this hospital in ``specs``.
    specs : every hospital's :class:`~fl_lessons.HospitalSpec`, as given to ``make_hospitals``.
    seed : the seed given to ``make_hospitals``.
    common_test_per_hospital : as given to ``make_hospitals``; it decides how many random
        numbers hospital k's stream spends on labels before its images, so it must match.
    """
    hospital_id = check_hospital_id(hospital_id, len(specs))
    spec = specs[hospital_id]
    # make_hospitals gives hospital k the k-th child of SeedSequence(seed); a child's
    # spawn key is (k,), so building it directly skips the other hospitals' streams.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(hospital_id,)))
    # The same draws in the same order as make_hospitals, up to (not including) the
    # common test images, which belong to the coordinator, not to the hospital.
    train_labels = _draw_labels(spec.num_train, spec.prevalence, rng)
    test_labels = _draw_labels(spec.num_test, spec.prevalence, rng)
    _draw_labels(common_test_per_hospital, spec.prevalence, rng)
    train_x, train_y = _to_tensors(render_chest_xrays(train_labels, spec.scanner, rng), train_labels)
    test_x, test_y = _to_tensors(render_chest_xrays(test_labels, spec.scanner, rng), test_labels)
    return Hospital(spec.name, train_x, train_y, test_x, test_y, spec.scanner)


def load_common_test_set(
    specs: tuple[HospitalSpec, ...] | list[HospitalSpec] = DEFAULT_HOSPITALS,
    seed: int = 0,
    common_test_per_hospital: int = COMMON_TEST_PER_HOSPITAL,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The common test set the server evaluates on: ``make_hospitals(...)``'s ``test_x, test_y``.

    Parameters
    ----------
    specs, seed, common_test_per_hospital : as given to ``make_hospitals``.

    In a real deployment the coordinator holds a test set of its own. Here it is drawn from
    the hospitals' synthetic populations, so reproducing it means running the generator,
    hospitals' training images included, and keeping only the common test images: an
    artefact of the synthetic world, not something a real server could or should do.
    """
    data = make_hospitals(seed=seed, specs=specs, common_test_per_hospital=common_test_per_hospital)
    return data.test_x, data.test_y
