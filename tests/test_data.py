"""Tests for fl_lessons.data: synthetic hospitals, partitioners and the PneumoniaMNIST loader."""

import urllib.error

import numpy as np
import pytest
import torch

import fl_lessons as fl
from fl_lessons import data as fl_data
from fl_lessons.data import (
    DEFAULT_HOSPITALS,
    PNEUMONIAMNIST_MD5,
    PNEUMONIAMNIST_URL,
    HospitalSpec,
    Scanner,
    file_md5,
    hospitals_from_partition,
    label_counts,
    load_hospitals,
    load_pneumoniamnist,
    make_hospitals,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
    pneumoniamnist_hospitals,
)

# Small hospitals keep every test fast; sizes and prevalences are deliberately unequal.
SMALL_SPECS = (
    HospitalSpec("Alpha", 40, 10, 0.25, Scanner(brightness=0.05)),
    HospitalSpec("Beta", 25, 8, 0.60, Scanner(contrast=0.8, blur_px=0.7)),
    HospitalSpec("Gamma", 13, 5, 0.50, Scanner(noise_sd=0.08, shift_px=(1.0, -1.0))),
)
SMALL_COMMON_TEST = 6


def small_hospitals(seed=0, specs=SMALL_SPECS):
    return make_hospitals(seed=seed, specs=specs, common_test_per_hospital=SMALL_COMMON_TEST)


def all_images(hospital_data):
    """Every tensor make_hospitals produced, in a fixed order, for equality checks."""
    tensors = []
    for hospital in hospital_data.hospitals:
        tensors += [hospital.train_x, hospital.train_y, hospital.test_x, hospital.test_y]
    return tensors + [hospital_data.test_x, hospital_data.test_y]


# ---------------------------------------------------------------------------------------
# Synthetic hospitals
# ---------------------------------------------------------------------------------------


def test_same_seed_gives_identical_images_and_labels():
    first, second = small_hospitals(seed=3), small_hospitals(seed=3)
    for a, b in zip(all_images(first), all_images(second), strict=True):
        assert torch.equal(a, b)


def test_different_seeds_give_different_images_and_labels():
    first, second = small_hospitals(seed=3), small_hospitals(seed=4)
    for a, b in zip(first.hospitals, second.hospitals):
        assert not torch.equal(a.train_x, b.train_x)
        assert not torch.equal(a.test_x, b.test_x)
    assert not torch.equal(first.test_x, second.test_x)
    # Labels are a random order of a fixed count: at least one hospital's order differs.
    assert any(not torch.equal(a.train_y, b.train_y) for a, b in zip(first.hospitals, second.hospitals))


def test_images_are_float32_in_unit_range_with_the_pneumoniamnist_shape():
    hospital_data = small_hospitals()
    for hospital, spec in zip(hospital_data.hospitals, SMALL_SPECS):
        for images, n in ((hospital.train_x, spec.num_train), (hospital.test_x, spec.num_test)):
            assert images.dtype == torch.float32
            assert images.shape == (n, 1, 28, 28)
            assert images.min() >= 0.0 and images.max() <= 1.0
    num_common = SMALL_COMMON_TEST * len(SMALL_SPECS)
    assert hospital_data.test_x.shape == (num_common, 1, 28, 28)
    assert hospital_data.test_y.shape == (num_common,)


def test_labels_are_binary_and_match_each_spec_prevalence_exactly():
    hospital_data = small_hospitals()
    for hospital, spec in zip(hospital_data.hospitals, SMALL_SPECS):
        for labels, n in ((hospital.train_y, spec.num_train), (hospital.test_y, spec.num_test)):
            assert labels.dtype == torch.float32
            assert set(labels.unique().tolist()) <= {0.0, 1.0}
            assert int(labels.sum()) == round(spec.prevalence * n)
        assert hospital.prevalence == pytest.approx(round(spec.prevalence * spec.num_train) / spec.num_train)
    # The common test set takes each hospital's prevalence in its block of images.
    blocks = hospital_data.test_y.split(SMALL_COMMON_TEST)
    for block, spec in zip(blocks, SMALL_SPECS):
        assert int(block.sum()) == round(spec.prevalence * SMALL_COMMON_TEST)


def test_hospitals_have_the_sizes_and_names_of_their_specs():
    hospital_data = small_hospitals()
    assert hospital_data.names == [spec.name for spec in SMALL_SPECS]
    assert [h.num_examples for h in hospital_data.hospitals] == [s.num_train for s in SMALL_SPECS]
    assert [h.scanner for h in hospital_data.hospitals] == [s.scanner for s in SMALL_SPECS]
    pooled_x, pooled_y = hospital_data.pooled()
    assert pooled_x.shape[0] == pooled_y.shape[0] == sum(s.num_train for s in SMALL_SPECS)
    assert torch.equal(pooled_x[:SMALL_SPECS[0].num_train], hospital_data.hospitals[0].train_x)


def test_default_hospitals_are_clearly_unequal():
    sizes = np.array([spec.num_train for spec in DEFAULT_HOSPITALS])
    prevalences = np.array([spec.prevalence for spec in DEFAULT_HOSPITALS])
    assert len(DEFAULT_HOSPITALS) == 5
    assert len({spec.name for spec in DEFAULT_HOSPITALS}) == 5
    assert sizes.max() >= 4 * sizes.min()
    assert sizes.std() / sizes.mean() > 0.5
    assert prevalences.max() - prevalences.min() >= 0.2
    assert len({spec.scanner for spec in DEFAULT_HOSPITALS}) == 5


def scanner_pair(first: Scanner, second: Scanner, num_images: int = 300):
    """Two hospitals that differ only in their scanner; returns their training images as numpy."""
    specs = (HospitalSpec("first", num_images, 0, 0.4, first),
             HospitalSpec("second", num_images, 0, 0.4, second))
    hospital_data = make_hospitals(seed=0, specs=specs, common_test_per_hospital=0)
    return [hospital.train_x.squeeze(1).numpy() for hospital in hospital_data.hospitals]


def brightness_weighted_column(images):
    mean_image = images.mean(axis=0)
    return float((mean_image.sum(axis=0) * np.arange(28)).sum() / mean_image.sum())


def roughness(images):
    """Mean absolute difference between horizontally neighbouring pixels."""
    return float(np.abs(np.diff(images, axis=-1)).mean())


def test_scanner_brightness_shifts_mean_intensity():
    bright, dark = scanner_pair(Scanner(brightness=0.10), Scanner(brightness=-0.08))
    assert bright.mean() - dark.mean() > 0.12


def test_scanner_shift_moves_the_patient():
    shifted, centred = scanner_pair(Scanner(shift_px=(2.0, 0.0)), Scanner())
    assert brightness_weighted_column(shifted) - brightness_weighted_column(centred) > 0.8


def test_scanner_blur_and_noise_change_image_texture():
    blurred, sharp = scanner_pair(Scanner(blur_px=1.0), Scanner(blur_px=0.0))
    assert roughness(blurred) < 0.9 * roughness(sharp)
    noisy, clean = scanner_pair(Scanner(noise_sd=0.10), Scanner(noise_sd=0.03))
    assert roughness(noisy) > 1.4 * roughness(clean)


def test_default_scanners_make_hospitals_look_different():
    # Riverside's scanner is brighter than St. Agnes'; same prevalence and seed stream
    # layout isolate the scanner.
    riverside, st_agnes = DEFAULT_HOSPITALS[1].scanner, DEFAULT_HOSPITALS[2].scanner
    assert riverside.brightness > st_agnes.brightness
    bright, dark = scanner_pair(riverside, st_agnes)
    assert bright.mean() > dark.mean() + 0.05


def test_pneumonia_brightens_the_lung_fields_on_average():
    labels = np.repeat([0, 1], 300)
    images = fl_data.render_chest_xrays(labels, Scanner(), np.random.default_rng(0))
    # Lung centres sit at u = -+0.40, v = -0.02 with half-widths 0.30 x 0.56 (in units of
    # the half image, 13.5 px): columns 6-10 and 17-21, rows 9-18 lie well inside them.
    lungs = np.zeros((28, 28), dtype=bool)
    lungs[9:19, 6:11] = True
    lungs[9:19, 17:22] = True
    # The mediastinum (columns 13-14) holds no lung tissue, so no pneumonia.
    mediastinum = np.zeros((28, 28), dtype=bool)
    mediastinum[5:14, 13:15] = True
    sick, healthy = images[labels == 1], images[labels == 0]
    lung_difference = sick[:, lungs].mean() - healthy[:, lungs].mean()
    mediastinum_difference = sick[:, mediastinum].mean() - healthy[:, mediastinum].mean()
    assert lung_difference > 0.04
    assert lung_difference > mediastinum_difference + 0.03


def test_adding_a_hospital_leaves_earlier_hospitals_unchanged():
    two, three = small_hospitals(seed=5, specs=SMALL_SPECS[:2]), small_hospitals(seed=5)
    for a, b in zip(two.hospitals, three.hospitals[:2]):
        assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
        assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    num_common_two = 2 * SMALL_COMMON_TEST
    assert torch.equal(two.test_x, three.test_x[:num_common_two])


@pytest.mark.parametrize(
    "spec, message",
    [
        (HospitalSpec("Empty", 0, 5, 0.5), "Empty: num_train must be >= 1"),
        (HospitalSpec("Negative", 10, -1, 0.5), "Negative: num_train must be >= 1 and num_test >= 0"),
        (HospitalSpec("TooSick", 10, 5, 1.5), r"TooSick: prevalence must lie in \[0, 1\], got 1.5"),
        (HospitalSpec("Below", 10, 5, -0.1), r"Below: prevalence must lie in \[0, 1\]"),
    ],
)
def test_invalid_specs_are_refused_with_the_hospital_named(spec, message):
    with pytest.raises(ValueError, match=message):
        make_hospitals(specs=(SMALL_SPECS[0], spec), common_test_per_hospital=2)


def test_negative_common_test_size_is_refused_by_name():
    with pytest.raises(ValueError, match="common_test_per_hospital"):
        make_hospitals(specs=SMALL_SPECS[:1], common_test_per_hospital=-1)


def test_no_hospitals_is_refused():
    with pytest.raises(ValueError, match="at least one HospitalSpec"):
        make_hospitals(specs=())


def test_unknown_data_source_is_refused():
    with pytest.raises(ValueError, match="Unknown data source 'mnist'.*synthetic.*pneumoniamnist"):
        load_hospitals("mnist")


# ---------------------------------------------------------------------------------------
# Partitioners
# ---------------------------------------------------------------------------------------


def binary_labels(num_examples=400, prevalence=0.3, seed=0):
    labels = np.zeros(num_examples, dtype=np.int64)
    labels[: int(prevalence * num_examples)] = 1
    return np.random.default_rng(seed).permutation(labels)


PARTITIONERS = {
    "iid": lambda n, k, seed: partition_iid(n, k, seed=seed),
    "quantity": lambda n, k, seed: partition_quantity(n, k, alpha=0.5, seed=seed),
    "dirichlet": lambda n, k, seed: partition_dirichlet(binary_labels(n), k, alpha=0.5, seed=seed),
}


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
@pytest.mark.parametrize("num_examples, num_clients", [(400, 7), (40, 10), (9, 1)])
def test_partition_is_an_exact_cover(name, num_examples, num_clients):
    parts = PARTITIONERS[name](num_examples, num_clients, 0)
    assert len(parts) == num_clients
    assert all(len(part) >= 1 for part in parts)
    assert all(part.dtype.kind == "i" for part in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(num_examples))


@pytest.mark.parametrize("name", ["iid", "quantity"])
def test_as_many_clients_as_examples_gives_one_each(name):
    parts = PARTITIONERS[name](10, 10, 0)
    assert sorted(int(part[0]) for part in parts) == list(range(10))
    assert all(len(part) == 1 for part in parts)


@pytest.mark.parametrize("name", sorted(PARTITIONERS))
def test_partition_is_deterministic_from_the_seed(name):
    first, again, other = (PARTITIONERS[name](400, 7, seed) for seed in (1, 1, 2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_iid_partition_has_equal_sizes():
    sizes = [len(part) for part in partition_iid(103, 5, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def mean_label_skew(labels, parts):
    """Mean over clients of |client positive fraction - global positive fraction|."""
    overall = labels.mean()
    return float(np.mean([abs(labels[part].mean() - overall) for part in parts]))


def test_small_alpha_gives_more_label_skew_than_large_alpha():
    labels = binary_labels(1000, prevalence=0.4)
    seeds = range(5)
    skew_small = np.mean([mean_label_skew(labels, partition_dirichlet(labels, 10, 0.1, seed=s)) for s in seeds])
    skew_large = np.mean([mean_label_skew(labels, partition_dirichlet(labels, 10, 100.0, seed=s)) for s in seeds])
    assert skew_small > 0.15
    assert skew_large < 0.05
    assert skew_small > 4 * skew_large


def test_dirichlet_partition_respects_min_size():
    labels = binary_labels(200)
    parts = partition_dirichlet(labels, 8, alpha=0.1, seed=0, min_size=10)
    assert min(len(part) for part in parts) >= 10


def coefficient_of_variation(parts):
    sizes = np.array([len(part) for part in parts], dtype=float)
    return sizes.std() / sizes.mean()


def test_small_alpha_gives_more_unequal_sizes_in_quantity_skew():
    seeds = range(5)
    cv_small = np.mean([coefficient_of_variation(partition_quantity(1000, 10, 0.2, seed=s)) for s in seeds])
    cv_large = np.mean([coefficient_of_variation(partition_quantity(1000, 10, 100.0, seed=s)) for s in seeds])
    assert cv_small > 1.0
    assert cv_large < 0.2
    assert cv_small > 5 * cv_large


def test_quantity_skew_keeps_labels_mixed():
    # Quantity skew changes sizes, not label mix: large clients look like the whole data.
    labels = binary_labels(2000, prevalence=0.4)
    parts = partition_quantity(2000, 4, alpha=100.0, seed=0)
    assert mean_label_skew(labels, parts) < 0.05


PARTITION_CALLS = {
    "iid": lambda n, k, alpha: partition_iid(n, k),
    "quantity": lambda n, k, alpha: partition_quantity(n, k, alpha=alpha),
    "dirichlet": lambda n, k, alpha: partition_dirichlet(binary_labels(n), k, alpha=alpha),
}


@pytest.mark.parametrize("name", sorted(PARTITION_CALLS))
def test_more_clients_than_examples_is_refused(name):
    with pytest.raises(ValueError, match=r"Cannot split 5 examples across K=6 clients.*K <= 5"):
        PARTITION_CALLS[name](5, 6, 1.0)


@pytest.mark.parametrize("name", sorted(PARTITION_CALLS))
@pytest.mark.parametrize("num_clients", [0, -2])
def test_fewer_than_one_client_is_refused(name, num_clients):
    with pytest.raises(ValueError, match=f"num_clients \\(K\\) must be at least 1, got {num_clients}"):
        PARTITION_CALLS[name](20, num_clients, 1.0)


@pytest.mark.parametrize("name", ["quantity", "dirichlet"])
@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_non_positive_alpha_is_refused(name, alpha):
    with pytest.raises(ValueError, match=f"alpha must be > 0, got {alpha}"):
        PARTITION_CALLS[name](20, 4, alpha)


def test_impossible_min_size_is_refused():
    with pytest.raises(ValueError, match=r"min_size=6 for K=4 clients needs 24 examples, but there are 20"):
        partition_dirichlet(binary_labels(20), 4, alpha=1.0, min_size=6)


def test_dirichlet_gives_up_with_advice_after_max_tries():
    # 10 examples for 10 clients with a tiny alpha: almost every draw leaves a client empty.
    with pytest.raises(ValueError, match=r"in 3 draws\. Use a larger alpha or fewer clients"):
        partition_dirichlet(binary_labels(10, prevalence=0.5), 10, alpha=0.01, seed=0, max_tries=3)


def test_label_counts_matches_independent_count():
    labels = binary_labels(300, prevalence=0.35)
    parts = partition_dirichlet(labels, 6, alpha=0.3, seed=2)
    counts = label_counts(torch.as_tensor(labels, dtype=torch.float32), parts)
    expected = np.array([[np.sum(labels[part] == c) for c in (0, 1)] for part in parts])
    assert counts.shape == (6, 2)
    np.testing.assert_array_equal(counts, expected)
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(labels, minlength=2))


def test_label_counts_keeps_absent_classes_as_zero_columns():
    labels = np.array([0, 0, 1, 0])
    counts = label_counts(labels, [np.array([0, 1]), np.array([2, 3])], num_classes=3)
    np.testing.assert_array_equal(counts, [[2, 0, 0], [1, 1, 0]])


def test_hospitals_from_partition_covers_the_data():
    hospital_data = small_hospitals()
    features, labels = hospital_data.pooled()
    parts = partition_dirichlet(labels.numpy(), 4, alpha=0.5, seed=1)
    clients = hospitals_from_partition(features, labels, parts, hospital_data.test_x, hospital_data.test_y)
    assert clients.names == ["Client 1", "Client 2", "Client 3", "Client 4"]
    assert clients.source == "partition"
    assert sum(client.num_examples for client in clients.hospitals) == labels.shape[0]
    for client, part in zip(clients.hospitals, parts):
        assert torch.equal(client.train_x, features[part])
        assert torch.equal(client.train_y, labels[part])
        assert client.test_x.shape == (0, 1, 28, 28) and client.test_y.shape == (0,)
    # Putting every client's images back in their original positions gives the data again.
    union_x, union_y = torch.empty_like(features), torch.full_like(labels, -1.0)
    index = torch.as_tensor(np.concatenate(parts))
    union_x[index], union_y[index] = clients.pooled()
    assert torch.equal(union_x, features) and torch.equal(union_y, labels)
    assert clients.test_x is hospital_data.test_x


# ---------------------------------------------------------------------------------------
# PneumoniaMNIST loader, on small files in the MedMNIST format
# ---------------------------------------------------------------------------------------

SMALL_SPLITS = {"train": 20, "val": 6, "test": 8}


def medmnist_arrays(sizes=None, seed=0):
    """Arrays as MedMNIST stores them: uint8 images (N, 28, 28), integer labels (N, 1)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (sizes or SMALL_SPLITS).items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.zeros((n, 1), dtype=np.uint8)
        labels[: max(n // 3, 1)] = 1
        arrays[f"{split}_labels"] = rng.permutation(labels)
    return arrays


def write_npz(path, arrays):
    np.savez(path, **arrays)
    return path


@pytest.fixture
def small_npz(tmp_path):
    arrays = medmnist_arrays()
    return write_npz(tmp_path / "small.npz", arrays), arrays


def test_load_round_trips_images_and_labels(small_npz):
    path, arrays = small_npz
    splits = load_pneumoniamnist(path)
    assert set(splits) == {"train", "val", "test"}
    for split, n in SMALL_SPLITS.items():
        images, labels = splits[split]
        assert images.dtype == torch.float32 and images.shape == (n, 1, 28, 28)
        expected_images = torch.from_numpy(arrays[f"{split}_images"].astype(np.float32) / 255.0)
        assert torch.allclose(images.squeeze(1), expected_images, atol=0, rtol=1e-6)
        assert labels.dtype == torch.float32 and labels.shape == (n,)
        np.testing.assert_array_equal(labels.numpy(), arrays[f"{split}_labels"].reshape(-1))


def test_load_accepts_the_right_checksum_and_refuses_a_wrong_one(small_npz):
    path, _ = small_npz
    load_pneumoniamnist(path, expected_md5=file_md5(path))
    with pytest.raises(ValueError, match=r"MD5 [0-9a-f]{32}, expected 0{32}.*corrupt"):
        load_pneumoniamnist(path, expected_md5="0" * 32)


def test_file_md5_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "bytes.bin"
    content = bytes(range(256)) * 5000  # over one 1 MiB read chunk
    path.write_bytes(content)
    assert file_md5(path) == hashlib.md5(content).hexdigest()


def test_truncated_file_is_refused_as_corrupt(small_npz):
    path, _ = small_npz
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ValueError, match="could not be read as an .npz file.*corrupt"):
        load_pneumoniamnist(path)


def test_garbage_file_is_refused_as_corrupt(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"<html>503 Service Unavailable</html>" * 10)
    with pytest.raises(ValueError, match="could not be read as an .npz file.*corrupt"):
        load_pneumoniamnist(path)


def mutate(arrays, key, value):
    changed = dict(arrays)
    if value is None:
        del changed[key]
    else:
        changed[key] = value
    return changed


@pytest.mark.parametrize(
    "key, make_value, message",
    [
        ("val_labels", lambda a: None, r"not a MedMNIST file: missing keys \['val_labels'\]"),
        ("train_images", lambda a: a["train_images"].astype(np.float32) / 255,
         r"train_images must be uint8 shaped \(N, 28, 28\); got float32"),
        ("test_images", lambda a: np.zeros((8, 32, 32), dtype=np.uint8),
         r"test_images must be uint8 shaped \(N, 28, 28\); got uint8 \(8, 32, 32\)"),
        ("train_labels", lambda a: a["train_labels"].reshape(-1),
         r"train_labels must be integers shaped \(N, 1\); got uint8 \(20,\)"),
        ("val_labels", lambda a: a["val_labels"].astype(np.float64),
         r"val_labels must be integers shaped \(N, 1\); got float64"),
        ("train_labels", lambda a: np.where(np.arange(20)[:, None] == 3, 2, a["train_labels"]),
         r"train_labels must be 0 \(normal\) or 1 \(pneumonia\); found \[2\]"),
        ("test_labels", lambda a: a["test_labels"][:5],
         r"test has 8 images but 5 labels"),
    ],
)
def test_malformed_files_are_refused_naming_the_problem(tmp_path, key, make_value, message):
    arrays = medmnist_arrays()
    path = write_npz(tmp_path / "bad.npz", mutate(arrays, key, make_value(arrays)))
    with pytest.raises(ValueError, match=message):
        load_pneumoniamnist(path)


def test_missing_official_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_LESSONS_DATA_DIR", str(tmp_path))
    expected_path = tmp_path / "pneumoniamnist.npz"
    with pytest.raises(FileNotFoundError) as raised:
        load_pneumoniamnist()
    message = str(raised.value)
    assert PNEUMONIAMNIST_URL in message
    assert str(expected_path) in message
    assert "download_pneumoniamnist" in message


def test_missing_own_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="No file at"):
        load_pneumoniamnist(tmp_path / "nowhere.npz")


def test_official_file_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_LESSONS_DATA_DIR", str(tmp_path))
    path = write_npz(tmp_path / "pneumoniamnist.npz", medmnist_arrays())
    # The same file loads when named explicitly: only the official location insists on MD5.
    load_pneumoniamnist(path)
    with pytest.raises(ValueError, match=f"MD5 {file_md5(path)}, expected {PNEUMONIAMNIST_MD5}"):
        load_pneumoniamnist()


def refuse_network(*args, **kwargs):
    raise urllib.error.URLError("offline")


def test_download_failure_says_where_to_put_the_file(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse_network)
    with pytest.raises(RuntimeError) as raised:
        fl.download_pneumoniamnist(tmp_path)
    message = str(raised.value)
    assert PNEUMONIAMNIST_URL in message
    assert str(tmp_path / "pneumoniamnist.npz") in message
    assert "offline" in message
    assert isinstance(raised.value.__cause__, urllib.error.URLError)


def test_downloaded_file_with_wrong_checksum_is_refused(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def fake_download(url, root, filename, md5):
        assert url == PNEUMONIAMNIST_URL and md5 == PNEUMONIAMNIST_MD5
        write_npz(tmp_path / filename, medmnist_arrays())

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download)
    with pytest.raises(RuntimeError, match="wrong checksum"):
        fl.download_pneumoniamnist(tmp_path)


def test_switching_notebooks_to_pneumoniamnist_offline_explains_itself(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    monkeypatch.setenv("FL_LESSONS_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse_network)
    with pytest.raises(RuntimeError, match="copy it to"):
        load_hospitals("pneumoniamnist")


def test_pneumoniamnist_hospitals_split_the_train_set_exactly(tmp_path):
    sizes = {"train": 60, "val": 20, "test": 10}
    arrays = medmnist_arrays(sizes)
    path = write_npz(tmp_path / "medium.npz", arrays)
    hospital_data = pneumoniamnist_hospitals(num_hospitals=5, alpha=1.0, seed=0, path=path)
    assert hospital_data.source == "pneumoniamnist"
    assert len(hospital_data.hospitals) == 5
    assert all(hospital.num_examples >= 1 for hospital in hospital_data.hospitals)
    assert sum(hospital.num_examples for hospital in hospital_data.hospitals) == sizes["train"]
    assert sum(hospital.test_y.shape[0] for hospital in hospital_data.hospitals) == sizes["val"]
    # Every training image ends up at exactly one hospital: compare as sorted byte strings.
    train_pixels = torch.from_numpy(arrays["train_images"].astype(np.float32) / 255.0)
    pooled_x, pooled_y = hospital_data.pooled()
    as_rows = sorted(image.numpy().tobytes() for image in pooled_x.squeeze(1))
    assert as_rows == sorted(image.numpy().tobytes() for image in train_pixels)
    assert int(pooled_y.sum()) == int(arrays["train_labels"].sum())
    # The common test set is the file's test split, untouched.
    expected_test = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255.0).unsqueeze(1)
    assert torch.equal(hospital_data.test_x, expected_test)
    np.testing.assert_array_equal(hospital_data.test_y.numpy(), arrays["test_labels"].reshape(-1))


def test_partition_with_a_fractional_number_of_clients_is_refused():
    with pytest.raises(ValueError, match="whole number"):
        partition_iid(10, 2.5)
