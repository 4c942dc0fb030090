"""``UCIMultipleFeaturesDataModule``: the six views of UCI Multiple Features (handwritten digits)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lightning_mmloss import _validation as V
from lightning_mmloss.experiments.data._dataset import MultiviewDataset, _SplitsDataModule

VIEWS = {
    "fou": "mfeat-fou.csv",  # 76 Fourier coefficients of the character shapes
    "fac": "mfeat-fac.csv",  # 216 profile correlations
    "kar": "mfeat-kar.csv",  # 64 Karhunen-Loeve coefficients
    "pix": "mfeat-pix.csv",  # 240 pixel averages in 2 x 3 windows
    "zer": "mfeat-zer.csv",  # 47 Zernike moments
    "mor": "mfeat-mor.csv",  # 6 morphological features
}
CORRUPTIONS = ("noise", "swap")
SOURCE = "https://archive.ics.uci.edu/dataset/72/multiple+features"


FEATURES = {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
NUM_CLASSES = 10


def _scan_cells(rows: list[str], width: int, num_features: int, where: str) -> np.ndarray:
    """Parse the instance rows one cell at a time, raising at the first bad one with its position."""
    values = np.empty((len(rows) - 1, width), dtype=np.float64)
    for r, line in enumerate(rows[1:], start=2):  # file line numbers, 1-based, header = 1
        cells = line.split(",")
        if len(cells) != width:
            raise ValueError(
                f"Expected {width} comma-separated fields ({num_features} features and the label) in row {r} of "
                f"{where!r}, but got {len(cells)}."
            )
        for c, cell in enumerate(cells, start=1):
            try:
                v = float(cell)
            except ValueError:
                raise ValueError(
                    f"Expected a number in row {r}, column {c} of {where!r}, but got {cell.strip()!r}."
                ) from None
            if not math.isfinite(v):
                raise ValueError(
                    f"Expected a finite number in row {r}, column {c} of {where!r}, but got {cell.strip()!r} "
                    "(one non-finite cell would turn the whole column NaN after standardisation)."
                )
            values[r - 2, c - 1] = v
    return values


def _read_view(path: Path, num_features: int) -> tuple[Tensor, Tensor]:
    """One view's CSV, checked cell by cell: features ``(N, D)`` float32 and labels ``(N,)`` int64.

    Expected: a header row of the column indices ``0 .. D-1`` plus one for the label, then one
    row per instance of ``D`` finite numbers and an integer label in ``0 .. 9``, separated by
    commas. Every deviation is a ``ValueError`` naming the file, the row and the column.
    """
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"Expected {where!r} to be a UTF-8 text CSV file, but it is not ({err}).") from err
    rows = [line for line in text.splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"Expected {where!r} to hold a header row and 2000 instances, but the file is empty.")
    width = num_features + 1
    header = [c.strip() for c in rows[0].split(",")]
    if len(header) != width or header[:num_features] != [str(i) for i in range(num_features)]:
        sep = " (it looks separated by ';': use commas)" if ";" in rows[0] else ""
        raise ValueError(
            f"Expected the first row of {where!r} to be the header: the column indices 0..{num_features - 1} and the "
            f"label's column ({width} comma-separated fields), but got {rows[0][:80]!r}{sep}. A file without its "
            "header would lose its first instance."
        )
    if len(rows) == 1:
        raise ValueError(f"Expected instances after the header of {where!r}, but the file has only the header.")
    try:  # the fast path; the cell-by-cell scan below only runs to explain a failure
        values = np.loadtxt(rows[1:], delimiter=",", dtype=np.float64, ndmin=2)
        ok = values.shape == (len(rows) - 1, width)
    except ValueError:
        ok = False
    if ok:
        bad_cells = ~np.isfinite(values)
        if bad_cells.any():
            r, c = (int(i) for i in np.argwhere(bad_cells)[0])
            raise ValueError(
                f"Expected a finite number in row {r + 2}, column {c + 1} of {where!r}, but got {values[r, c]!r} "
                "(one non-finite cell would turn the whole column NaN after standardisation)."
            )
    else:
        values = _scan_cells(rows, width, num_features, where)
    labels = values[:, -1]
    bad = (labels != np.round(labels)) | (labels < 0) | (labels >= NUM_CLASSES)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"Expected the label (last column) of every row of {where!r} to be an integer in 0..{NUM_CLASSES - 1}, "
            f"but row {i + 2} has {labels[i]:g}."
        )
    return torch.from_numpy(values[:, :-1]).float(), torch.from_numpy(labels).long()


def _read_uci_view(path: Path, num_features: int) -> tuple[Tensor, Tensor]:
    """One view in the UCI repository's own format: 2000 rows of space-separated numbers, no header, no labels.

    The labels follow from the order (the dataset's description: 200 instances of digit 0, then
    200 of each of 1..9).
    """
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise ValueError(f"Expected {str(path)!r} to hold space-separated numbers (UCI's format), but: {err}") from err
    n = NUM_CLASSES * 200
    if values.shape != (n, num_features):
        raise ValueError(
            f"Expected {str(path)!r} (UCI's format) to hold {n} rows of {num_features} numbers, but got "
            f"{values.shape[0]} rows of {values.shape[1]}."
        )
    if not np.isfinite(values).all():
        r, c = (int(i) for i in np.argwhere(~np.isfinite(values))[0])
        raise ValueError(f"Expected a finite number in row {r + 1}, column {c + 1} of {str(path)!r}.")
    labels = torch.arange(n) // 200
    return torch.from_numpy(values).float(), labels


def load_views(data_dir: str | Path) -> tuple[dict[str, Tensor], Tensor]:
    """Read and check the six views: our CSV files, or the UCI repository's own files.

    Per view, ``mfeat-<view>.csv`` (a header row, then the features and the label in the last
    column) or, where that is absent, the repository's ``mfeat-<view>`` (space-separated, no
    header; labels from the order).
    """
    root = Path(data_dir)
    if not root.is_dir():
        what = "is a file, not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"Expected argument `data_dir` to be a directory holding the UCI Multiple Features CSV files, but "
            f"{str(root)!r} {what}. Get the data from {SOURCE} (one CSV per view: {', '.join(VIEWS.values())}; "
            "or the repository's own mfeat-* files, as they are)."
        )
    views: dict[str, Tensor] = {}
    labels = None
    for name, file in VIEWS.items():
        path, raw = root / file, root / file.removesuffix(".csv")
        if path.is_file():
            x, y = _read_view(path, FEATURES[name])
        elif raw.is_file():
            path = raw
            x, y = _read_uci_view(raw, FEATURES[name])
        else:
            raise FileNotFoundError(
                f"Expected the file {file!r} (or UCI's own {raw.name!r}) in {str(root)!r} (view {name!r}), but both "
                "are missing."
            )
        if labels is None:
            labels = y
        elif not torch.equal(labels, y):
            raise ValueError(
                f"Expected every view to list the same labels in the same order, but {str(path)!r} differs from "
                f"{VIEWS['fou']!r} ({len(y)} vs {len(labels)} rows)."
            )
        views[name] = x
    assert labels is not None
    return views, labels


def stratified_split(target: Tensor, fractions: tuple[float, float, float], seed: int) -> list[Tensor]:
    """Indices of train/val/test with the class proportions of ``target`` in each, by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[], [], []]
    for c in target.unique():
        idx = (target == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_train = round(fractions[0] * len(idx))
        n_val = round(fractions[1] * len(idx))
        for i, chunk in enumerate((idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :])):
            parts[i].append(chunk)
    return [torch.cat(p).sort().values for p in parts]


class UCIMultipleFeaturesDataModule(_SplitsDataModule):
    """UCI Multiple Features: 2000 handwritten digits (10 classes), six views of each.

    Stratified train/val/test split by ``seed``; each view standardised with the training
    split's mean and standard deviation. Optional corruption: a ``corrupt_fraction`` of the
    instances of every split get ``corrupt_views`` randomly chosen views replaced by standard
    Gaussian noise (``corruption="noise"``) or by another class's views (``"swap"``);
    ``informative`` in each batch is ``False`` exactly there (ground truth).
    Reads ``data_dir`` only; never downloads.

    Args:
        data_dir: directory with ``mfeat-fou.csv`` ... ``mfeat-mor.csv``.
        fractions: train, val and test shares.
        corrupt_fraction: share of instances with corrupted views (``0`` = clean data).
        corrupt_views: views replaced in each corrupted instance (1 to 5).
        corruption: ``"noise"`` (replaced by standard Gaussian noise) or ``"swap"`` (misleading:
            replaced by the same views of one instance of another class from the same split).
        batch_size: loader batch size (``0`` = whole split).
        seed: split and corruption seed.
        num_workers: loader workers.

    Example::

        >>> from lightning_mmloss.experiments.data import UCIMultipleFeaturesDataModule
        >>> dm = UCIMultipleFeaturesDataModule(UCI_DIR, corrupt_fraction=0.5)  # the folder with the six CSVs
        >>> dm.setup("fit")
        >>> dm.input_dims, len(dm.splits["train"])
        ({'fou': 76, 'fac': 216, 'kar': 64, 'pix': 240, 'zer': 47, 'mor': 6}, 1200)
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str,
        fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
        corrupt_fraction: float = 0.0,
        corrupt_views: int = 3,
        corruption: str = "noise",
        batch_size: int = 128,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.data_dir = str(data_dir)
        ok = isinstance(fractions, Sequence) and len(fractions) == 3
        # check_nonnegative refuses NaN, which `min(...) < 0` let through
        shares = [V.check_nonnegative("fractions", f) for f in fractions] if ok else []
        if not ok or abs(sum(shares) - 1) > 1e-6:
            raise ValueError(
                f"Expected argument `fractions` to be three shares >= 0 summing to 1, but got {fractions!r}."
            )
        self.fractions = tuple(float(f) for f in fractions)
        if not 0.0 <= corrupt_fraction <= 1.0:
            raise ValueError(f"Expected argument `corrupt_fraction` to be in [0, 1], but got {corrupt_fraction!r}.")
        self.corrupt_fraction = float(corrupt_fraction)
        self.corrupt_views = V.check_int("corrupt_views", corrupt_views, 1)
        if self.corrupt_views >= len(VIEWS):
            raise ValueError(
                f"Expected argument `corrupt_views` to be at most {len(VIEWS) - 1}, but got {corrupt_views}."
            )
        self.corruption = V.check_choice("corruption", corruption, CORRUPTIONS)
        self._set_loader_args(batch_size, seed, num_workers)
        self.save_hyperparameters()
        self.splits: dict[str, MultiviewDataset] = {}
        self._dims: dict[str, int] | None = None

    @property
    def modalities(self) -> list[str]:
        """View names."""
        return list(VIEWS)

    @property
    def input_dims(self) -> dict[str, int]:
        """Features per view (reads the files on first use)."""
        if self._dims is None:
            self.setup()
        assert self._dims is not None
        return self._dims

    def setup(self, stage: str | None = None) -> None:
        """Read, split, standardise and (optionally) corrupt; deterministic by ``seed``."""
        if self.splits:
            return
        views, target = load_views(self.data_dir)
        self._dims = {k: v.shape[1] for k, v in views.items()}
        idx = stratified_split(target, self.fractions, self.seed)  # type: ignore[arg-type]
        train = idx[0]
        g = torch.Generator().manual_seed(self.seed + 1)
        for split, ids in zip(("train", "val", "test"), idx, strict=True):
            split_views = {}
            for name, v in views.items():
                mean, std = v[train].mean(0), v[train].std(0).clamp_min(1e-6)
                split_views[name] = (v[ids] - mean) / std
            informative = torch.ones(len(ids), len(VIEWS), dtype=torch.bool)
            if self.corrupt_fraction:
                corrupt = torch.rand(len(ids), generator=g) < self.corrupt_fraction
                for i in corrupt.nonzero().squeeze(1).tolist():
                    chosen = torch.randperm(len(VIEWS), generator=g)[: self.corrupt_views]
                    informative[i, chosen] = False
                if self.corruption == "swap":
                    # one donor of another class per corrupted instance: its chosen views all
                    # show that other digit, confidently and consistently (misleading, not noisy)
                    y = target[ids]
                    donor = torch.arange(len(ids))
                    for i in corrupt.nonzero().squeeze(1).tolist():
                        others = (y != y[i]).nonzero().squeeze(1)
                        donor[i] = others[torch.randint(len(others), (1,), generator=g)]
                    originals = {name: v.clone() for name, v in split_views.items()}
                for m, name in enumerate(VIEWS):
                    bad = ~informative[:, m]
                    if self.corruption == "swap":
                        split_views[name][bad] = originals[name][donor[bad]]
                    else:
                        noise = torch.randn(int(bad.sum()), self._dims[name], generator=g)
                        split_views[name][bad] = noise
            self.splits[split] = MultiviewDataset(split_views, target[ids], informative)
