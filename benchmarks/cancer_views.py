"""A third real multi-view data set, built offline: scikit-learn's breast cancer data in its three natural views.

The 569 instances of ``sklearn.datasets.load_breast_cancer`` (the UCI "Breast Cancer Wisconsin
(Diagnostic)" data, shipped inside scikit-learn, so nothing is downloaded) describe cell nuclei by
ten measurements, each reported three ways: the mean over the nuclei of an image, its standard
error and the worst (largest) value. Those three groups are the views: ``mean``, ``se``,
``worst``. Every view is clean and ``se`` is the weakest (benchmarks/README.md, Q6). The case of
issue 26: a clean real set where a fusion must not fall below late fusion or its own best head,
and should discount the weaker view.

Through ``compare`` (a data module of one's own)::

    PYTHONPATH=benchmarks lightning-mmloss compare --data cancer_views.CancerViewsDataModule --proxies 10

Needs scikit-learn (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import torch

try:  # imported as benchmarks.<name> (the tests) or with benchmarks/ on the path (the scripts, compare)
    from benchmarks._views import StandardisedViews
except ImportError:
    from _views import StandardisedViews

VIEWS = ("mean", "se", "worst")


class CancerViewsDataModule(StandardisedViews):
    """scikit-learn's breast cancer data as three views of ten features (2 classes, 569 instances, clean).

    Stratified train/val/test split by ``seed`` (60/20/20); every feature standardised with the
    training split's mean and standard deviation.

    Args:
        batch_size: loader batch size (``0`` = whole split).
        seed: split and shuffle seed.
        num_workers: loader workers.

    Example::

        >>> dm = CancerViewsDataModule(seed=0)
        >>> dm.setup("fit")
        >>> dm.input_dims, len(dm.splits["train"]), len(dm.splits["test"])
        ({'mean': 10, 'se': 10, 'worst': 10}, 341, 115)
    """

    num_classes = 2
    views = dict.fromkeys(VIEWS, 10)
    min_std = 1e-12

    def load(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The 30 measurements as three views of ten, and the diagnosis."""
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        x = torch.as_tensor(data.data, dtype=torch.float32)  # (569, 30): 10 means, 10 errors, 10 worst
        target = torch.as_tensor(data.target, dtype=torch.long)
        return {name: x[:, 10 * i : 10 * (i + 1)] for i, name in enumerate(VIEWS)}, target
