"""Hospitals and their chest X-rays: synthetic CXRs, real PneumoniaMNIST, and partitioners.

Taught in notebook 01 (centralized training); the partitioners return in notebooks 04-06.

Everything here produces images shaped ``1 x 28 x 28`` with values in [0, 1] and labels
0 (normal) / 1 (pneumonia): the shape of MedMNIST's PneumoniaMNIST (Yang et al. 2023,
"MedMNIST v2", Scientific Data 10:41), so every model in the course runs on both.

The synthetic generator draws a chest in a few readable steps (body, two lung fields,
mediastinum and heart, ribs), adds pneumonia as soft opacities of varying size, position
and density inside the lungs, and then passes the picture through the hospital's own
scanner (brightness, contrast, blur, noise, positioning). It is deterministic from a seed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

IMAGE_SIZE = 28

PNEUMONIAMNIST_URL = "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
PNEUMONIAMNIST_FILENAME = "pneumoniamnist.npz"
PNEUMONIAMNIST_MD5 = "28209eda62fecd6e6a2d98b1501bb15f"
PNEUMONIAMNIST_SPLITS = ("train", "val", "test")
PNEUMONIAMNIST_CITATION = (
    "Jiancheng Yang, Rui Shi, Donglai Wei, Zequan Liu, Lin Zhao, Bilian Ke, Hanspeter "
    "Pfister, Bingbing Ni. MedMNIST v2 - A large-scale lightweight benchmark for 2D and "
    "3D biomedical image classification. Scientific Data, 2023. (CC BY 4.0)"
)


def default_data_dir() -> Path:
    """The folder downloads go to: ``$FL_LESSONS_DATA_DIR``, else the repository's ``data/``."""
    override = os.environ.get("FL_LESSONS_DATA_DIR")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "data"


# ---------------------------------------------------------------------------------------
# Hospitals
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scanner:
    """How one hospital's X-ray machine and radiographers change every image it takes.

    Parameters
    ----------
    brightness : added to every pixel (exposure).
    contrast : multiplies the deviation from mid-grey (detector response).
    noise_sd : standard deviation of Gaussian pixel noise (detector quality, dose).
    blur_px : standard deviation, in pixels, of a Gaussian blur (0 = sharp).
    shift_px : (dx, dy) systematic positioning offset of the patient, in pixels.
    jitter_px : per-image random positioning, standard deviation in pixels.
    """

    brightness: float = 0.0
    contrast: float = 1.0
    noise_sd: float = 0.03
    blur_px: float = 0.0
    shift_px: tuple[float, float] = (0.0, 0.0)
    jitter_px: float = 0.7


@dataclass(frozen=True)
class HospitalSpec:
    """What a synthetic hospital looks like: its name, size, disease prevalence and scanner.

    Parameters
    ----------
    name : the hospital's name, shown in tables and figures.
    num_train : n_k, the training images the hospital keeps to itself.
    num_test : images in the hospital's own held-out test set.
    prevalence : the fraction of its patients with pneumonia.
    scanner : its :class:`Scanner`.
    """

    name: str
    num_train: int
    num_test: int
    prevalence: float
    scanner: Scanner = field(default_factory=Scanner)


DEFAULT_HOSPITALS: tuple[HospitalSpec, ...] = (
    HospitalSpec("Northgate University", 2000, 200, 0.40,
                 Scanner(brightness=0.00, contrast=1.00, noise_sd=0.03, blur_px=0.0)),
    HospitalSpec("Riverside General", 1200, 200, 0.30,
                 Scanner(brightness=0.10, contrast=0.85, noise_sd=0.05, blur_px=0.6,
                         shift_px=(1.0, 0.0))),
    HospitalSpec("St. Agnes Children's", 700, 200, 0.55,
                 Scanner(brightness=-0.08, contrast=1.15, noise_sd=0.04, blur_px=0.0,
                         shift_px=(0.0, 1.5))),
    HospitalSpec("Lakeside Community", 450, 200, 0.25,
                 Scanner(brightness=0.05, contrast=0.75, noise_sd=0.08, blur_px=0.9,
                         shift_px=(-1.5, 1.0))),
    HospitalSpec("Highland Rural Clinic", 250, 200, 0.50,
                 Scanner(brightness=-0.04, contrast=0.90, noise_sd=0.10, blur_px=1.1,
                         shift_px=(1.5, -1.0), jitter_px=1.2)),
)
"""The course's five hospitals: clearly unequal in size, prevalence and scanner."""

COMMON_TEST_PER_HOSPITAL = 200


@dataclass
class Hospital:
    """One hospital: its own training images, its own test set, and how they were made.

    The images are ``float32`` tensors shaped ``(n, 1, 28, 28)`` in [0, 1]; the labels are
    ``float32`` tensors of 0.0 (normal) and 1.0 (pneumonia), the form the loss expects.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    scanner: Scanner | None = None

    @property
    def num_examples(self) -> int:
        """n_k: how many training examples this hospital holds."""
        return int(self.train_y.shape[0])

    @property
    def prevalence(self) -> float:
        """Fraction of the training images labelled pneumonia."""
        return float(self.train_y.mean())


@dataclass
class HospitalData:
    """The hospitals of one experiment and the common test set drawn across all of them."""

    hospitals: list[Hospital]
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str = "synthetic"

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All hospitals' training data in one place: what federated learning never does."""
        features = torch.cat([hospital.train_x for hospital in self.hospitals])
        labels = torch.cat([hospital.train_y for hospital in self.hospitals])
        return features, labels

    @property
    def names(self) -> list[str]:
        return [hospital.name for hospital in self.hospitals]


def _soft_inside(distance: np.ndarray, softness: float) -> np.ndarray:
    """1 well inside an ellipse (distance < 1), 0 well outside, a smooth edge between."""
    # Clipping keeps exp() finite far outside the ellipse, where the answer is 0 anyway.
    return 1.0 / (1.0 + np.exp(np.minimum((distance - 1.0) / softness, 60.0)))


def _gaussian_blur(images: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur a stack of images with a separable Gaussian, as one matrix product per axis."""
    if sigma_px <= 0:
        return images
    positions = np.arange(IMAGE_SIZE)
    kernel = np.exp(-0.5 * ((positions[:, None] - positions[None, :]) / sigma_px) ** 2)
    kernel = (kernel / kernel.sum(axis=1, keepdims=True)).astype(np.float32)
    return kernel @ images @ kernel.T


def render_chest_xrays(
    labels: np.ndarray, scanner: Scanner, rng: np.random.Generator
) -> np.ndarray:
    """Draw one synthetic chest X-ray per label, as seen by ``scanner``.

    Parameters
    ----------
    labels : array of 0 (normal) and 1 (pneumonia), one per image.
    scanner : the hospital's :class:`Scanner`.
    rng : the random generator; the same generator state gives the same images.

    Returns
    -------
    ``float32`` array shaped ``(n, 28, 28)`` with values in [0, 1].
    """
    n = len(labels)
    center = (IMAGE_SIZE - 1) / 2
    # float32 throughout: twice as fast as float64, and the images are stored as float32.
    rows, cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)

    def per_image(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float32).reshape(n, 1, 1)

    # Positioning: the hospital's systematic offset plus each patient's own.
    dx = per_image(scanner.shift_px[0] + rng.normal(0, scanner.jitter_px, n))
    dy = per_image(scanner.shift_px[1] + rng.normal(0, scanner.jitter_px, n))
    u = (cols[None] - center - dx) / center  # -1 (image left) .. 1 (image right)
    v = (rows[None] - center - dy) / center  # -1 (top) .. 1 (bottom)
    body_scale = per_image(rng.normal(1.0, 0.05, n))

    # 1. Body: soft tissue inside the thorax, dark air around it.
    body = _soft_inside(np.hypot(u / (0.88 * body_scale), (v - 0.08) / 1.0), 0.04)
    image = 0.06 + 0.46 * body

    # 2. Lung fields: two dark ellipses; air absorbs little, so lungs look dark.
    lung_w = 0.30 * body_scale
    lung_h = per_image(rng.normal(0.56, 0.04, n))
    lungs = np.zeros_like(u)
    for side in (-1.0, 1.0):
        lungs += _soft_inside(np.hypot((u - side * 0.40) / lung_w, (v + 0.02) / lung_h), 0.08)
    image -= 0.30 * lungs

    # 3. Mediastinum and heart: bright soft tissue between and over the lungs.
    mediastinum = _soft_inside(np.hypot(u / 0.13, (v + 0.05) / 0.80), 0.10)
    heart_size = per_image(rng.normal(1.0, 0.08, n))
    heart = _soft_inside(np.hypot((u - 0.13) / (0.30 * heart_size), (v - 0.35) / 0.24), 0.10)
    image += 0.20 * mediastinum + 0.14 * heart

    # 4. Ribs: curved bright bands across the lung fields.
    rib_phase = per_image(rng.uniform(0, 1, n))
    ribs = (0.5 + 0.5 * np.cos(2 * np.pi * (4.2 * v + 0.9 * u**2 + rib_phase))) ** 4
    image += 0.10 * ribs * lungs

    # 5. Vessels and other normal markings: small faint spots in every lung, sick or not,
    #    so a faint spot alone does not mean pneumonia.
    image += _opacities(u[:, :1, :], v[:, :, :1], rng, n, count=3, sigma=(0.04, 0.08),
                        density=(0.04, 0.12), present=np.ones(n, dtype=bool)) * lungs

    # 6. Pneumonia: one to three opacities of varying size, position and density, some
    #    faint enough to be missed: the reason the task is learnable but not trivial.
    sick = labels.astype(bool)
    image += _opacities(u[:, :1, :], v[:, :, :1], rng, n, count=3, sigma=(0.08, 0.26),
                        density=(0.04, 0.45), present=sick) * lungs

    # 7. The scanner: exposure, detector response, blur, noise.
    #    Each exposure also varies a little from patient to patient.
    contrast = scanner.contrast * per_image(rng.normal(1.0, 0.08, n))
    image = 0.5 + contrast * (image - 0.5) + scanner.brightness
    image += per_image(rng.normal(0, 0.06, n))
    image = _gaussian_blur(image, scanner.blur_px)
    image += rng.normal(0, scanner.noise_sd, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _opacities(u_row, v_col, rng, n, count, sigma, density, present):
    """Sum of up to ``count`` Gaussian spots per image inside the lung fields.

    ``u_row`` is ``(n, 1, 28)`` and ``v_col`` is ``(n, 28, 1)``: a round Gaussian is the
    product of one along the row and one along the column, which is far cheaper to compute.
    """
    total = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for spot in range(count):
        side = rng.choice([-1.0, 1.0], n)
        center_u = side * 0.40 + rng.uniform(-0.18, 0.18, n)
        center_v = rng.uniform(-0.45, 0.45, n)
        width = rng.uniform(*sigma, n)
        strength = rng.uniform(*density, n)
        # Spot 0 is present in every selected image; the others in about half of them.
        shown = present & ((spot == 0) | (rng.uniform(0, 1, n) < 0.5))
        amplitude = (strength * shown).astype(np.float32).reshape(n, 1, 1)
        spread = (2 * width**2).astype(np.float32).reshape(n, 1, 1)
        along_row = np.exp(-((u_row - center_u.reshape(n, 1, 1).astype(np.float32)) ** 2) / spread)
        along_col = np.exp(-((v_col - center_v.reshape(n, 1, 1).astype(np.float32)) ** 2) / spread)
        total += amplitude * along_row * along_col
    return total


def _draw_labels(num_images: int, prevalence: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(prevalence * n) pneumonia cases, in random order."""
    num_sick = int(round(prevalence * num_images))
    labels = np.zeros(num_images, dtype=np.int64)
    labels[:num_sick] = 1
    return rng.permutation(labels)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    return features, torch.from_numpy(labels.astype(np.float32))


def make_hospitals(
    seed: int = 0,
    specs: tuple[HospitalSpec, ...] | list[HospitalSpec] = DEFAULT_HOSPITALS,
    common_test_per_hospital: int = COMMON_TEST_PER_HOSPITAL,
) -> HospitalData:
    """Generate the synthetic hospitals and a common test set, deterministically from ``seed``.

    Parameters
    ----------
    seed : the same seed always gives the same images and labels.
    specs : one :class:`HospitalSpec` per hospital (default: the course's five).
    common_test_per_hospital : images each hospital's population adds to the common test set.
    """
    if len(specs) < 1:
        raise ValueError("make_hospitals needs at least one HospitalSpec.")
    if common_test_per_hospital < 0:
        raise ValueError(
            f"common_test_per_hospital must be >= 0, got {common_test_per_hospital}."
        )
    for spec in specs:
        if spec.num_train < 1 or spec.num_test < 0:
            raise ValueError(f"{spec.name}: num_train must be >= 1 and num_test >= 0.")
        if not 0.0 <= spec.prevalence <= 1.0:
            raise ValueError(f"{spec.name}: prevalence must lie in [0, 1], got {spec.prevalence}.")
    # One independent stream per hospital, so adding a hospital never changes the others.
    streams = np.random.SeedSequence(seed).spawn(len(specs))
    hospitals, common_x, common_y = [], [], []
    for spec, stream in zip(specs, streams):
        rng = np.random.default_rng(stream)
        train_labels = _draw_labels(spec.num_train, spec.prevalence, rng)
        test_labels = _draw_labels(spec.num_test, spec.prevalence, rng)
        common_labels = _draw_labels(common_test_per_hospital, spec.prevalence, rng)
        train_x, train_y = _to_tensors(render_chest_xrays(train_labels, spec.scanner, rng), train_labels)
        test_x, test_y = _to_tensors(render_chest_xrays(test_labels, spec.scanner, rng), test_labels)
        shared_x, shared_y = _to_tensors(render_chest_xrays(common_labels, spec.scanner, rng), common_labels)
        hospitals.append(Hospital(spec.name, train_x, train_y, test_x, test_y, spec.scanner))
        common_x.append(shared_x)
        common_y.append(shared_y)
    return HospitalData(hospitals, torch.cat(common_x), torch.cat(common_y), source="synthetic")


# ---------------------------------------------------------------------------------------
# Real data: PneumoniaMNIST
# ---------------------------------------------------------------------------------------


def file_md5(path: str | Path) -> str:
    """The MD5 checksum of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_pneumoniamnist(root: str | Path | None = None) -> Path:
    """Download PneumoniaMNIST (about 4 MB) into ``root`` and check its MD5 checksum.

    Parameters
    ----------
    root : destination folder (default: the repository's ``data/``).

    Uses torchvision's download utility, which skips the download when a file with the
    right checksum is already there. Raises ``RuntimeError`` saying where to put the file
    by hand when there is no network.
    """
    from torchvision.datasets.utils import download_url

    root = Path(root) if root is not None else default_data_dir()
    root.mkdir(parents=True, exist_ok=True)
    target = root / PNEUMONIAMNIST_FILENAME
    try:
        download_url(PNEUMONIAMNIST_URL, str(root), PNEUMONIAMNIST_FILENAME, PNEUMONIAMNIST_MD5)
    except Exception as error:  # network errors come in many types; all end the same way
        raise RuntimeError(
            f"Could not download PneumoniaMNIST ({type(error).__name__}: {error}).\n"
            f"Without a network, download it on another machine from\n  {PNEUMONIAMNIST_URL}\n"
            f"and copy it to\n  {target}\n"
            f"(MD5 {PNEUMONIAMNIST_MD5}). The course runs offline on synthetic data meanwhile."
        ) from error
    if file_md5(target) != PNEUMONIAMNIST_MD5:
        raise RuntimeError(
            f"The downloaded file {target} has the wrong checksum; delete it and try again."
        )
    return target


def _validate_medmnist_arrays(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Refuse, with a message that says what is wrong, anything not in MedMNIST's format."""
    expected = [f"{split}_{kind}" for split in PNEUMONIAMNIST_SPLITS for kind in ("images", "labels")]
    missing = [key for key in expected if key not in arrays]
    if missing:
        raise ValueError(
            f"{path} is not a MedMNIST file: missing keys {missing} "
            f"(found {sorted(arrays)}; expected {expected})."
        )
    for split in PNEUMONIAMNIST_SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"{path}: {split}_images must be uint8 shaped (N, 28, 28); "
                f"got {images.dtype} {images.shape}."
            )
        if labels.ndim != 2 or labels.shape[1] != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{path}: {split}_labels must be integers shaped (N, 1); got {labels.dtype} {labels.shape}."
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{path}: {split} has {images.shape[0]} images but {labels.shape[0]} labels."
            )
        unexpected = sorted(set(np.unique(labels).tolist()) - {0, 1})
        if unexpected:
            raise ValueError(
                f"{path}: {split}_labels must be 0 (normal) or 1 (pneumonia); found {unexpected}."
            )


def load_pneumoniamnist(
    path: str | Path | None = None,
    *,
    download: bool = False,
    expected_md5: str | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load PneumoniaMNIST (or any file in its format) as ``{split: (images, labels)}``.

    Parameters
    ----------
    path : a MedMNIST-format ``.npz`` file. Default: the official file in ``data/``, whose
        MD5 checksum is then always checked.
    download : fetch the official file first if it is not there yet.
    expected_md5 : a checksum to insist on for a file of your own (default: none).

    Images come back as ``float32`` tensors ``(N, 1, 28, 28)`` scaled to [0, 1], labels as
    ``float32`` tensors of 0.0 / 1.0. Nothing is returned unless every check passes.
    """
    official = path is None
    if official:
        path = default_data_dir() / PNEUMONIAMNIST_FILENAME
        expected_md5 = PNEUMONIAMNIST_MD5
        if download and not path.exists():
            download_pneumoniamnist(path.parent)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No file at {path}. Run fl_lessons.download_pneumoniamnist() with a network, or "
            f"download {PNEUMONIAMNIST_URL} by hand and save it as {path}."
        )
    if expected_md5 is not None:
        actual = file_md5(path)
        if actual != expected_md5:
            raise ValueError(
                f"{path} has MD5 {actual}, expected {expected_md5}: the file is corrupt, "
                f"incomplete or a different version. Delete it and download it again."
            )
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise ValueError(
            f"{path} could not be read as an .npz file ({type(error).__name__}: {error}); "
            f"it is probably corrupt or an incomplete download. Delete it and download it again."
        ) from error
    _validate_medmnist_arrays(arrays, path)
    splits = {}
    for split in PNEUMONIAMNIST_SPLITS:
        images = torch.from_numpy(arrays[f"{split}_images"].astype(np.float32) / 255.0).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{split}_labels"].reshape(-1).astype(np.float32))
        splits[split] = (images, labels)
    return splits


def pneumoniamnist_hospitals(
    num_hospitals: int = len(DEFAULT_HOSPITALS),
    *,
    alpha: float = 1.0,
    seed: int = 0,
    path: str | Path | None = None,
    download: bool = False,
) -> HospitalData:
    """Split real PneumoniaMNIST across hospitals: the same course, on real X-rays.

    Parameters
    ----------
    num_hospitals : K, how many hospitals share the data.
    alpha : Dirichlet concentration of the label skew (smaller = more different hospitals).
    seed : seeds the split.
    path, download : as in :func:`load_pneumoniamnist`.

    The official training split is divided with :func:`partition_dirichlet`; the official
    validation split is divided the same way to give each hospital a small test set of its
    own; the official test split (624 images) is the common test set.
    """
    splits = load_pneumoniamnist(path, download=download)
    train_x, train_y = splits["train"]
    val_x, val_y = splits["val"]
    train_parts = partition_dirichlet(train_y.numpy(), num_hospitals, alpha, seed=seed)
    val_parts = partition_dirichlet(val_y.numpy(), num_hospitals, alpha, seed=seed + 1)
    hospitals = [
        Hospital(f"Hospital {k + 1}", train_x[train_idx], train_y[train_idx],
                 val_x[val_idx], val_y[val_idx], scanner=None)
        for k, (train_idx, val_idx) in enumerate(zip(train_parts, val_parts))
    ]
    test_x, test_y = splits["test"]
    return HospitalData(hospitals, test_x, test_y, source="pneumoniamnist")


DATA_SOURCES = ("synthetic", "pneumoniamnist")


def load_hospitals(source: str = "synthetic", seed: int = 0) -> HospitalData:
    """The one setting every notebook uses to choose its data.

    Parameters
    ----------
    source : ``"synthetic"`` (offline, the default) or ``"pneumoniamnist"`` (the real
        images; the file must be in ``data/`` or downloadable).
    seed : seeds the generator or the split.
    """
    if source == "synthetic":
        return make_hospitals(seed=seed)
    if source == "pneumoniamnist":
        return pneumoniamnist_hospitals(seed=seed, download=True)
    raise ValueError(f"Unknown data source {source!r}; choose one of {DATA_SOURCES}.")


# ---------------------------------------------------------------------------------------
# Partitioners: split any (X, y) across K clients
# ---------------------------------------------------------------------------------------


def _check_partition_request(num_examples: int, num_clients: int) -> None:
    if not isinstance(num_clients, (int, np.integer)):
        raise ValueError(f"num_clients (K) must be a whole number, got {num_clients!r}.")
    if num_clients < 1:
        raise ValueError(f"num_clients (K) must be at least 1, got {num_clients}.")
    if num_clients > num_examples:
        raise ValueError(
            f"Cannot split {num_examples} examples across K={num_clients} clients: every "
            f"client needs at least one example. Use K <= {num_examples}."
        )


def partition_iid(num_examples: int, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle the examples and deal them into K clients of (almost) equal size.

    Parameters
    ----------
    num_examples : how many examples to split.
    num_clients : K.
    seed : seeds the shuffle.
    """
    _check_partition_request(num_examples, num_clients)
    order = np.random.default_rng(seed).permutation(num_examples)
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def _sizes_from_proportions(proportions: np.ndarray, total: int, minimum: int) -> np.ndarray:
    """Integer sizes that sum to ``total``, each at least ``minimum``, close to the proportions."""
    spare = total - minimum * len(proportions)
    raw = proportions * spare
    sizes = np.floor(raw).astype(np.int64)
    # Hand the rounding remainder to the largest fractional parts, so the sizes sum exactly.
    remainder = spare - sizes.sum()
    sizes[np.argsort(raw - sizes)[::-1][:remainder]] += 1
    return sizes + minimum


def partition_quantity(
    num_examples: int, num_clients: int, alpha: float = 1.0, seed: int = 0
) -> list[np.ndarray]:
    """Quantity skew: client sizes drawn from Dirichlet(alpha), labels mixed at random.

    Parameters
    ----------
    num_examples : how many examples to split.
    num_clients : K.
    alpha : concentration; small alpha gives very unequal sizes, large alpha equal ones.
    seed : seeds the sizes and the shuffle.
    """
    _check_partition_request(num_examples, num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}; small values (e.g. 0.5) mean more skew.")
    rng = np.random.default_rng(seed)
    sizes = _sizes_from_proportions(rng.dirichlet(np.full(num_clients, alpha)), num_examples, 1)
    order = rng.permutation(num_examples)
    return [np.sort(part) for part in np.split(order, np.cumsum(sizes)[:-1])]


def partition_dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    seed: int = 0,
    min_size: int = 1,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label skew: each class is divided across clients in Dirichlet(alpha) proportions.

    Parameters
    ----------
    labels : one integer class label per example.
    num_clients : K.
    alpha : concentration; alpha -> 0 gives each client mostly one class, alpha -> inf IID.
    seed : seeds the draw.
    min_size : every client gets at least this many examples (the draw is repeated).
    max_tries : how many draws to attempt before giving up with an error.
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    _check_partition_request(len(labels), num_clients)
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}; small values (e.g. 0.1) mean more skew.")
    if min_size * num_clients > len(labels):
        raise ValueError(
            f"min_size={min_size} for K={num_clients} clients needs {min_size * num_clients} "
            f"examples, but there are {len(labels)}."
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = _sizes_from_proportions(shares, len(members), 0)
            for client, chunk in enumerate(np.split(members, np.cumsum(cuts)[:-1])):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(len(part) for part in result) >= min_size:
            return result
    raise ValueError(
        f"Could not give each of K={num_clients} clients at least {min_size} examples with "
        f"alpha={alpha} in {max_tries} draws. Use a larger alpha or fewer clients."
    )


def label_counts(labels: np.ndarray | torch.Tensor, parts: list[np.ndarray], num_classes: int = 2) -> np.ndarray:
    """Examples of each class at each client: a ``(K, num_classes)`` integer array.

    Parameters
    ----------
    labels : one class label per example.
    parts : the index arrays a partitioner returned.
    num_classes : number of classes (2: normal, pneumonia).
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    return np.stack([np.bincount(labels[part], minlength=num_classes) for part in parts])


def hospitals_from_partition(
    features: torch.Tensor,
    labels: torch.Tensor,
    parts: list[np.ndarray],
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    source: str = "partition",
) -> HospitalData:
    """Make one client per index array: used when K clients are carved out of pooled data.

    Parameters
    ----------
    features, labels : the data to split.
    parts : index arrays from a partitioner (an exact cover of the examples).
    test_x, test_y : the common test set.
    source : a label recorded on the result.

    Such clients keep no test set of their own (their test tensors are empty).
    """
    empty_x, empty_y = features[:0], labels[:0]
    hospitals = [
        Hospital(f"Client {k + 1}", features[torch.as_tensor(part)], labels[torch.as_tensor(part)],
                 empty_x, empty_y)
        for k, part in enumerate(parts)
    ]
    return HospitalData(hospitals, test_x, test_y, source=source)
