"""``compare`` never loses finished runs: options checked first, a row on disk per run, resume (issue 17, item 1)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightning_mmloss.experiments.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--scenario", "ehh", "--preset", "tiny", "--seeds", "1", "--hidden", "8"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("bad", [["--gamma", "0"], ["--proxies", "0"], ["--aux-weight", "-1"]])
def test_a_bad_option_fails_before_the_first_run(tmp_path: Path, bad: list[str]) -> None:
    start = time.perf_counter()
    with pytest.raises(SystemExit, match="cannot be built"):
        main(["compare", *TINY, "--fusions", "late,mm", "--epochs", "50", *bad, "--output", str(tmp_path / "o")])
    assert not (tmp_path / "o" / "results.csv").exists()
    assert time.perf_counter() - start < 30  # nothing was trained (50 epochs of late would take longer)


def test_hidden_sizes_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for hidden in ("0", "-5", "8,x", ""):
        with pytest.raises(SystemExit):
            main(["compare", "--hidden", hidden, "--output", str(tmp_path / "o")])
        assert "--hidden" in capsys.readouterr().err


def test_an_existing_table_is_neither_overwritten_nor_interleaved(tmp_path: Path) -> None:
    out = tmp_path / "o"
    main(["compare", *TINY, "--fusions", "late", "--epochs", "2", "--output", str(out)])
    before = (out / "results.csv").read_text()
    with pytest.raises(SystemExit, match="--resume"):
        main(["compare", *TINY, "--fusions", "late", "--epochs", "2", "--output", str(out)])
    assert (out / "results.csv").read_text() == before
    (out / ".compare.lock").write_text("")  # another compare writing there
    with pytest.raises(SystemExit, match="another compare"):
        main(["compare", *TINY, "--fusions", "late", "--epochs", "2", "--resume", "--output", str(out)])
    (out / ".compare.lock").unlink()
    with pytest.raises(SystemExit, match="other options"):
        main(["compare", *TINY, "--fusions", "late", "--epochs", "3", "--resume", "--output", str(out)])
    main(["compare", *TINY, "--fusions", "late", "--epochs", "2", "--overwrite", "--output", str(out)])
    assert [r["fusion"] for r in _rows(out / "results.csv")] == ["late"]
    assert len(list((out / "tensorboard" / "late" / "seed0").glob("events.out.tfevents.*"))) == 1


def _default_sigint() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.timeout(240)
def test_sigint_after_the_first_run_leaves_its_row_and_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "o"
    # 400 epochs: the second run trains for seconds, so the signal cannot miss it
    args = [*TINY, "--fusions", "late,sum", "--epochs", "400", "--output", str(out)]
    # the parent's SIGINT state is inherited across exec: an ignored or blocked SIGINT left by
    # anything earlier in the session would let the child run on, so the child starts clean
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_mmloss.experiments.cli", "compare", *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 180
        while not (out / "results.csv").exists():  # the first run finished
            assert proc.poll() is None and time.monotonic() < deadline, "compare ended before its first row"
            time.sleep(0.05)
        while not (out / "tensorboard" / "sum").exists():  # the second run started
            assert proc.poll() is None and time.monotonic() < deadline, "compare ended before its second run"
            time.sleep(0.05)
        time.sleep(0.5)  # inside the second run's training
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    rows = _rows(out / "results.csv")
    assert [(r["fusion"], r["seed"]) for r in rows] == [("late", "0")], f"parent's blocked signals: {blocked}"
    assert 0.0 <= float(rows[0]["test_acc"]) <= 1.0
    assert not (out / ".compare.lock").exists()
    first = rows[0]
    main(["compare", *args, "--resume"])
    rows = _rows(out / "results.csv")
    assert [(r["fusion"], r["seed"]) for r in rows] == [("late", "0"), ("sum", "0")]
    assert rows[0] == {k: first[k] for k in rows[0]}  # the finished run was kept, not redone
