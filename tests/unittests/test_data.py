"""Data modules: shapes, determinism, ground truth, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule, UCIMultipleFeaturesDataModule

UCI = Path(__file__).resolve().parents[3] / "shared" / "data" / "uci-mfeat"


@pytest.mark.parametrize("scenario", ["ehh", "instance", "conflict"])
def test_synthetic_shapes_and_determinism(scenario: str) -> None:
    a = SyntheticMultimodalDataModule(scenario, preset="tiny", num_classes=3, seed=4)
    b = SyntheticMultimodalDataModule(scenario, preset="tiny", num_classes=3, seed=4)
    c = SyntheticMultimodalDataModule(scenario, preset="tiny", num_classes=3, seed=5)
    for dm in (a, b, c):
        dm.setup()
    assert a.modalities == ["m1", "m2", "m3"] and a.input_dims == {"m1": 8, "m2": 8, "m3": 8}
    for split, n in (("train", 200), ("val", 100), ("test", 100)):
        batch = a.splits[split].as_batch()
        assert batch["m1"].shape == (n, 8) and batch["target"].shape == (n,) and batch["informative"].shape == (n, 3)
        assert torch.equal(batch["m2"], b.splits[split].as_batch()["m2"])
        assert not torch.equal(batch["m2"], c.splits[split].as_batch()["m2"])
    assert not torch.equal(a.splits["train"].views["m1"], a.splits["test"].views["m1"][:100].repeat(2, 1))


def test_synthetic_ground_truth_matches_the_signal() -> None:
    # with a strong signal, a nearest-class-mean rule on one modality is right where (and only
    # where) that modality is informative
    dm = SyntheticMultimodalDataModule("instance", preset="tiny", num_features=40, n_train=3000, signal=6.0, seed=1)
    dm.setup()
    b = dm.splits["train"].as_batch()
    for m, name in enumerate(dm.modalities):
        x, y, inf = b[name], b["target"], b["informative"][:, m]
        means = torch.stack([x[inf & (y == c)].mean(0) for c in range(2)])
        pred = torch.cdist(x, means).argmin(1)
        assert (pred[inf] == y[inf]).float().mean() > 0.95
        assert abs((pred[~inf] == y[~inf]).float().mean() - 0.5) < 0.1
    subsets = b["informative"].long() @ torch.tensor([1, 2, 4])
    assert subsets.min() >= 1 and len(subsets.unique()) == 7  # every non-empty subset occurs


def test_synthetic_ehh_and_conflict_ground_truth() -> None:
    ehh = SyntheticMultimodalDataModule("ehh", preset="tiny")
    ehh.setup()
    inf = ehh.splits["train"].informative
    assert inf[:, 0].all() and not inf[:, 1:].any()
    conflict = SyntheticMultimodalDataModule("conflict", preset="tiny", n_train=2000, conflict_fraction=0.3)
    conflict.setup()
    inf = conflict.splits["train"].informative
    assert inf[:, 1].all() and not inf[:, 2].any()
    assert 0.25 < (~inf[:, 0]).float().mean() < 0.35  # the misleading share of m1


def test_synthetic_errors() -> None:
    with pytest.raises(ValueError, match=r"`scenario` to be one of \('ehh', 'instance', 'conflict'\)"):
        SyntheticMultimodalDataModule("noise")
    with pytest.raises(ValueError, match=r"`preset` to be one of"):
        SyntheticMultimodalDataModule(preset="huge")
    with pytest.raises(ValueError, match=r"`conflict_fraction` to be in \[0, 1\]"):
        SyntheticMultimodalDataModule("conflict", conflict_fraction=1.5)


def test_uci_split_standardisation_and_corruption() -> None:
    dm = UCIMultipleFeaturesDataModule(str(UCI), seed=3)
    dm.setup()
    assert dm.input_dims == {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"train": 1200, "val": 400, "test": 400}
    for split in dm.splits.values():  # stratified: 10 classes in equal shares
        assert torch.bincount(split.target, minlength=10).tolist() == [len(split) // 10] * 10
    train = dm.splits["train"].views["pix"]
    torch.testing.assert_close(train.mean(0), torch.zeros(240), atol=1e-4, rtol=0)
    assert dm.splits["train"].informative.all()
    again = UCIMultipleFeaturesDataModule(str(UCI), seed=3)
    again.setup()
    assert torch.equal(again.splits["test"].views["fou"], dm.splits["test"].views["fou"])

    bad = UCIMultipleFeaturesDataModule(str(UCI), seed=3, corrupt_fraction=0.5, corrupt_views=2)
    bad.setup()
    inf = bad.splits["train"].informative
    corrupted = ~inf.all(1)
    assert 0.4 < corrupted.float().mean() < 0.6
    assert ((~inf).sum(1)[corrupted] == 2).all()
    clean_rows = ~corrupted
    torch.testing.assert_close(
        bad.splits["train"].views["kar"][clean_rows], dm.splits["train"].views["kar"][clean_rows]
    )
    replaced = ~inf[:, 3]
    assert not torch.allclose(bad.splits["train"].views["pix"][replaced], train[replaced])


def test_uci_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist. Get the data from https://archive.ics.uci.edu"):
        UCIMultipleFeaturesDataModule(str(tmp_path / "nowhere")).setup()
    _uci_copy(tmp_path)
    (tmp_path / "mfeat-fac.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"Expected the file 'mfeat-fac.csv' .* \(view 'fac'\)"):
        UCIMultipleFeaturesDataModule(str(tmp_path)).setup()
    with pytest.raises(ValueError, match=r"`corrupt_views` to be at most 5"):
        UCIMultipleFeaturesDataModule(str(tmp_path), corrupt_views=6)


def _uci_copy(tmp_path: Path) -> Path:
    import shutil

    for f in UCI.glob("mfeat-*.csv"):
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _edit(path: Path, row: int, new: str | None) -> None:
    """Replace (or with None delete) file line ``row`` (1-based; the header is line 1)."""
    lines = path.read_text().splitlines()
    if new is None:
        del lines[row - 1]
    else:
        lines[row - 1] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: _edit(p, 3, "1,0,0,nan,1.3,1620.2,0"), r"finite number in row 3, column 4 of .*mfeat-mor.csv"),
        (lambda p: _edit(p, 3, "1,0,0,inf,1.3,1620.2,0"), r"finite number in row 3, column 4"),
        (lambda p: _edit(p, 5, "1,0,0,133.1,1.3,1620.2,12"), r"integer in 0..9, but row 5 has 12"),
        (lambda p: _edit(p, 5, "1,0,0,133.1,1.3,1620.2,-1"), r"integer in 0..9, but row 5 has -1"),
        (lambda p: _edit(p, 5, "1,0,0,133.1,1.3,1620.2,3.7"), r"integer in 0..9, but row 5 has 3.7"),
        (lambda p: _edit(p, 4, "1,0,0,133.1"), r"7 comma-separated fields .* in row 4 of .*mfeat-mor.csv.*got 4"),
        (lambda p: _edit(p, 4, "1,0,abc,133.1,1.3,1620.2,0"), r"number in row 4, column 3 of .*, but got 'abc'"),
        (lambda p: _edit(p, 4, "1,0,,133.1,1.3,1620.2,0"), r"number in row 4, column 3 of .*, but got ''"),
        (lambda p: _edit(p, 4, "1,0,0,133.1,1.3,1620.2,0,5"), r"in row 4 of .*, but got 8"),
        (lambda p: p.write_text(p.read_text().replace(",", ";")), r"separated by ';': use commas"),
        (lambda p: p.write_text(""), r"mfeat-mor.csv' to hold a header row .* the file is empty"),
        (lambda p: p.write_text("0,1,2,3,4,5,0\n"), r"only the header"),
        (lambda p: _edit(p, 1, None), r"first row of .*mfeat-mor.csv' to be the header"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), r"UTF-8 text CSV file"),
    ],
)
def test_uci_bad_files_name_the_file_row_and_column(tmp_path: Path, change, match: str) -> None:
    root = _uci_copy(tmp_path)
    change(root / "mfeat-mor.csv")
    with pytest.raises(ValueError, match=match):
        UCIMultipleFeaturesDataModule(str(root)).setup()


def test_uci_data_dir_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file.csv"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match=r"is a file, not a directory"):
        UCIMultipleFeaturesDataModule(str(f)).setup()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_train": 0}, ValueError),
        ({"n_val": 0}, ValueError),
        ({"num_features": 0}, ValueError),
        ({"seed": 1.5}, TypeError),
        ({"seed": 2**63}, ValueError),
        ({"conflict_fraction": "0.3"}, TypeError),
    ],
)
def test_synthetic_sizes_and_seeds_are_not_silently_replaced(kwargs: dict, error: type) -> None:
    """Issue 17 item 5: 0 used to mean 'the preset's size', 1.5 became 1."""
    from lightning_mmloss.experiments.data import SyntheticMultimodalDataModule

    with pytest.raises(error, match=next(iter(kwargs))):
        SyntheticMultimodalDataModule("ehh", preset="tiny", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": 1.5}, TypeError, "seed"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**32}, ValueError, r"seed.*2\*\*32 - 1"),
        ({"batch_size": -1}, ValueError, "batch_size"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"num_workers": -1}, ValueError, "num_workers"),
    ],
)
def test_both_data_modules_check_seed_and_loader_arguments(kwargs: dict, error: type, match: str) -> None:
    """Issue 17 items 10/15: the UCI module took ``seed=1.5`` as 1; a synthetic seed of 2**63 - 1 was
    accepted and overflowed torch.Generator in ``setup`` (its streams are ``seed * 7919 + ...``)."""
    with pytest.raises(error, match=match):
        SyntheticMultimodalDataModule("ehh", preset="tiny", **kwargs)
    with pytest.raises(error, match=match):
        UCIMultipleFeaturesDataModule("unused", **kwargs)


def test_the_largest_seed_sets_up() -> None:
    dm = SyntheticMultimodalDataModule("ehh", preset="tiny", seed=2**32 - 1)
    dm.setup()
    assert len(dm.splits["train"]) > 0


def test_uci_repository_format_is_read_like_the_csv_files(tmp_path: Path) -> None:
    """Issue 17 item 17: the loader pointed to UCI's files and then refused their format."""
    from conftest import UCI_DIR
    from lightning_mmloss.experiments.data.uci_mfeat import VIEWS, load_views

    csv_views, csv_labels = load_views(UCI_DIR)
    for file in VIEWS.values():
        rows = (Path(UCI_DIR) / file).read_text().splitlines()[1:]
        raw = "\n".join("  ".join(r.split(",")[:-1]) for r in rows if r.strip())  # no header, no label
        (tmp_path / file.removesuffix(".csv")).write_text(raw + "\n")
    views, labels = load_views(tmp_path)
    assert torch.equal(labels, csv_labels)
    for name in VIEWS:
        torch.testing.assert_close(views[name], csv_views[name])
    (tmp_path / "mfeat-mor").write_text("1 2 3\n")
    with pytest.raises(ValueError, match="2000 rows of 6 numbers"):
        load_views(tmp_path)
