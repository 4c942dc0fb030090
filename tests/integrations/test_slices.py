"""``SubgroupMonitor(slices=...)``: reliability and agreement per slice value (issue 18 part 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, Dataset

from lightning_mmloss import SubgroupMonitor
from tests.helpers.models import SyntheticViews, ThreeHeadNet, retry_spawn_abort, trainer

SITES = ("north", "south", "east")


class _WithSlices(Dataset):
    """SyntheticViews plus ``site`` (a str), ``device`` (an int) and the instance index."""

    def __init__(self, n: int = 160, seed: int = 1, indices: list[int] | None = None) -> None:
        self.base = SyntheticViews(n, seed=seed, with_mask=True)
        self.indices = list(range(n)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = self.indices[i]
        item = dict(self.base[j])
        # unequal slice sizes: 'north' is the most frequent, then 'south', then 'east'
        item["site"] = SITES[0] if j % 6 < 3 else SITES[1] if j % 6 < 5 else SITES[2]
        item["device"] = torch.tensor(j % 4)
        item["id"] = torch.tensor(j)
        return item


def _monitor(**kwargs: Any) -> SubgroupMonitor:
    return SubgroupMonitor(print_summary=False, images_every_n_epochs=None, **kwargs)


def _validate(tmp_path: Path, model: ThreeHeadNet, loader: DataLoader, monitor: SubgroupMonitor) -> dict[str, float]:
    t = trainer(tmp_path, callbacks=[monitor])
    t.validate(model, loader, verbose=False)
    return SubgroupMonitor.metrics_of(t)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ThreeHeadNet:
    L.seed_everything(0)
    m = ThreeHeadNet()
    t = trainer(tmp_path_factory.mktemp("fit"), max_epochs=3)
    t.fit(m, *(DataLoader(SyntheticViews(n, seed=s, with_mask=True), batch_size=32) for n, s in ((256, 0), (64, 2))))
    return m


def test_slice_values_equal_separate_runs_on_each_subset(tmp_path: Path, model: ThreeHeadNet) -> None:
    full = _WithSlices()
    got = _validate(tmp_path, model, DataLoader(full, batch_size=32), _monitor(slices=["site", "device"]))
    checked = 0
    for name, values in (("site", SITES), ("device", ("0", "1", "2", "3"))):
        for value in values:
            rows = [i for i in range(len(full)) if str(full[i][name]).removeprefix("tensor(").rstrip(")") == value]
            subset = DataLoader(_WithSlices(indices=rows), batch_size=32)
            alone = _validate(tmp_path, model, subset, _monitor())
            for key, expected in alone.items():
                if "/subgroups/" in key:
                    assert f"{key}/{name}={value}" not in got  # subgroups are the whole epoch's
                    continue
                assert got[f"{key}/{name}={value}"] == pytest.approx(expected, abs=1e-6), (key, name, value)
                checked += 1
    assert checked == 7 * 30  # 24 reliability + 6 agreement scalars per value
    # the unsliced scalars are still the whole epoch's
    whole = _validate(tmp_path, model, DataLoader(full, batch_size=32), _monitor())
    assert {k: got[k] for k in whole} == pytest.approx(whole, abs=1e-9)


def test_a_callable_slice_and_ignored_targets(tmp_path: Path, model: ThreeHeadNet) -> None:
    model.configure_multimodal(model.mm_names, 3, 4, ignore_index=-100)
    try:

        def noisy(batch: dict[str, Any]) -> torch.Tensor:
            return batch["id"] % 2 == 0  # a bool tensor

        class Ignoring(_WithSlices):
            def __getitem__(self, i: int) -> dict[str, Any]:
                item = super().__getitem__(i)
                if i % 5 == 0:
                    item["target"] = torch.tensor(-100)
                return item

        got = _validate(tmp_path, model, DataLoader(Ignoring(), batch_size=32), _monitor(slices={"even": noisy}))
        kept = [i for i in range(160) if i % 5 != 0]
        for flag in (True, False):
            rows = [i for i in kept if (i % 2 == 0) == flag]
            alone = _validate(tmp_path, model, DataLoader(_WithSlices(indices=rows), batch_size=32), _monitor())
            assert got[f"val/reliability/fused/acc/even={flag}"] == pytest.approx(alone["val/reliability/fused/acc"])
            assert got[f"val/reliability/audio/ece/even={flag}"] == pytest.approx(alone["val/reliability/audio/ece"])
    finally:
        model.configure_multimodal(model.mm_names, 3, 4)


def test_values_beyond_the_cap_are_pooled_with_a_warning(tmp_path: Path, model: ThreeHeadNet) -> None:
    full = _WithSlices()
    with pytest.warns(UserWarning, match=r"slice 'site': 1 of its values beyond max_slice_values=2"):
        got = _validate(tmp_path, model, DataLoader(full, batch_size=32), _monitor(slices="site", max_slice_values=2))
    assert {k.rsplit("=", 1)[1] for k in got if "site=" in k} == {"north", "south", "(other)"}
    east = [i for i in range(len(full)) if full[i]["site"] == "east"]
    alone = _validate(tmp_path, model, DataLoader(_WithSlices(indices=east), batch_size=32), _monitor())
    assert got["val/reliability/video/acc/site=(other)"] == pytest.approx(alone["val/reliability/video/acc"])


@pytest.mark.parametrize(
    ("slices", "error", "match"),
    [
        (5, TypeError, "`slices` to be a batch key"),
        ({"a/b": "site"}, ValueError, "without '/'"),
        ({"site": 3}, TypeError, r"slices\['site'\]"),
        ("nowhere", ValueError, "to have the key 'nowhere'"),
        ({"f": lambda b: b["id"].float()}, ValueError, "int or bool tensor"),
        ({"f": lambda b: b["id"][:3]}, ValueError, "one value per instance"),
        ({"f": lambda b: 7}, TypeError, "a \\(B,\\) tensor or a list"),
    ],
)
def test_bad_slices_are_refused(tmp_path: Path, model: ThreeHeadNet, slices: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _validate(tmp_path, model, DataLoader(_WithSlices(32), batch_size=16), _monitor(slices=slices))


@pytest.mark.timeout(240)
@pytest.mark.filterwarnings("ignore:SubgroupMonitor slice 'device'.*pooled:UserWarning")
def test_slices_under_ddp_equal_one_process(tmp_path: Path, model: ThreeHeadNet) -> None:
    """Each rank sees other ``device`` values (the sampler interleaves indices): they are agreed on."""
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    loader = DataLoader(_WithSlices(), batch_size=16)
    # one slice only: ddp_spawn returns callback_metrics through a pipe that Lightning reads after
    # joining the processes, so more than about 200 keys (64 KiB) hang it (docs/monitor.md)
    expected = _validate(tmp_path, model, loader, _monitor(slices="device", max_slice_values=3))

    def run() -> L.Trainer:
        m = ThreeHeadNet()
        m.load_state_dict(state)
        t = trainer(
            tmp_path,
            strategy="ddp_spawn",
            devices=2,
            logger=CSVLogger(str(tmp_path), name="ddp", version=0),
            callbacks=[_monitor(slices="device", max_slice_values=3)],
        )
        t.validate(m, loader, verbose=False)
        return t

    got = SubgroupMonitor.metrics_of(retry_spawn_abort(run))
    assert got.keys() == expected.keys() and any("device=(other)" in k for k in got)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-6), k


def test_table_and_heatmap_per_slice(tmp_path: Path, model: ThreeHeadNet, capsys: pytest.CaptureFixture[str]) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb", version=0)
    t = trainer(tmp_path, logger=logger, callbacks=[SubgroupMonitor(slices=["site", "device"])])
    t.validate(model, DataLoader(_WithSlices(), batch_size=32), verbose=False)
    out = capsys.readouterr().out
    assert "accuracy / ECE by site" in out and "north (n=81)" in out and "east (n=26)" in out
    # 4 device values and 4 heads: heads as rows; the cell is the logged accuracy / ECE
    acc, ece = (SubgroupMonitor.metrics_of(t)[f"val/reliability/fused/{m}/device=2"] for m in ("acc", "ece"))
    assert f"{acc:.3f} / {ece:.3f}" in out
    ev = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    ev.Reload()
    assert {"val/slices/site", "val/slices/device"} <= set(ev.Tags()["images"])


def test_many_keys_under_ddp_spawn_warn_before_the_hang(tmp_path: Path) -> None:
    spawn = trainer(tmp_path, strategy="ddp_spawn", devices=2)
    plain = trainer(tmp_path)
    monitor = _monitor(slices="site")
    monitor._warn_spawn_limit(plain, 400)  # one process: no pipe, no warning
    with pytest.warns(UserWarning, match="strategy='ddp'"):
        monitor._warn_spawn_limit(spawn, 400)
