"""A second real multi-view data set, built offline: scikit-learn's bundled handwritten digits in quadrants.

The 1797 8x8 images of ``sklearn.datasets.load_digits`` (the UCI "Optical Recognition of
Handwritten Digits" test set, shipped inside scikit-learn, so nothing is downloaded) are cut into
four 4x4 quadrants, one view each: ``tl``, ``tr``, ``bl``, ``br``. No quadrant names the digit on
its own (each head alone scores 0.6-0.85), every quadrant is clean, and they disagree on many
instances: the case of issue 19, where fusing clean but partial views must not cost accuracy.

It is also an example of ``lightning-mmloss compare`` on a data module of one's own::

    PYTHONPATH=benchmarks lightning-mmloss compare --data digits_views.DigitsViewsDataModule --proxies 10

Needs scikit-learn (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import torch

try:  # imported as benchmarks.<name> (the tests) or with benchmarks/ on the path (the scripts, compare)
    from benchmarks._views import StandardisedViews
except ImportError:
    from _views import StandardisedViews

QUADRANTS = {"tl": (slice(0, 4), slice(0, 4)), "tr": (slice(0, 4), slice(4, 8)), "bl": (slice(4, 8), slice(0, 4))}
QUADRANTS["br"] = (slice(4, 8), slice(4, 8))


class DigitsViewsDataModule(StandardisedViews):
    """scikit-learn's 8x8 digits as four quadrant views (10 classes, 1797 instances, clean).

    Stratified train/val/test split by ``seed`` (60/20/20); every pixel standardised with the
    training split's mean and standard deviation (at least 1 grey level, so that a pixel blank in
    training does not blow up in test).

    Args:
        batch_size: loader batch size (``0`` = whole split).
        seed: split and shuffle seed.
        num_workers: loader workers.

    Example::

        >>> dm = DigitsViewsDataModule(seed=0)
        >>> dm.setup("fit")
        >>> dm.input_dims, len(dm.splits["train"]), len(dm.splits["test"])
        ({'tl': 16, 'tr': 16, 'bl': 16, 'br': 16}, 1078, 360)
    """

    num_classes = 10
    views = dict.fromkeys(QUADRANTS, 16)
    min_std = 1.0

    def load(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The 1797 images cut into quadrants, and their digits."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32)  # (N, 8, 8), grey levels 0..16
        target = torch.as_tensor(digits.target, dtype=torch.long)
        views = {name: images[:, rows, cols].reshape(len(images), -1) for name, (rows, cols) in QUADRANTS.items()}
        return views, target
