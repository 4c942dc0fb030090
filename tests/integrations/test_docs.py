"""Every code block of README.md and docs/*.md runs (python) or is checked against the code (bash).

Python blocks of one page run in order in one namespace, in a temporary working directory;
``--8<-- "file:start:end"`` lines are replaced by those lines of the file, as MkDocs'
snippets extension does. Bash lines are checked without running the (long) jobs they start:
``make`` targets exist, ``lightning-mmloss compare`` arguments parse and name existing data,
``--config`` files exist, and the checkpoint path named for ``test`` is the one the configs
write (the CLI tests fit every config and check that file). YAML blocks must be includes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::(\d+):(\d+))?"$')


def _blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


def _expand(code: str) -> str:
    lines = []
    for line in code.splitlines():
        m = SNIPPET.match(line.strip())
        if m:
            text = (ROOT / m.group(1)).read_text().splitlines()
            lines += text[int(m.group(2)) - 1 : int(m.group(3))] if m.group(2) else text
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_pages_have_code_blocks() -> None:
    assert sum(len(_blocks(p, "python")) for p in PAGES) >= 7
    assert sum(len(_blocks(p, "bash")) for p in PAGES) >= 6


@pytest.mark.timeout(300)
@pytest.mark.filterwarnings("ignore::lightning.fabric.utilities.warnings.PossibleUserWarning")  # tiny data
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's compiler stack about itself (distributed.md)
@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "python")], ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(_blocks(page, "python")):
        exec(compile(_expand(code), f"{page.name}[python block {i}]", "exec"), namespace)


def _commands(page: Path) -> list[list[str]]:
    out = []
    for block in _blocks(page, "bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line and not line.startswith("#"):
                out.append(shlex.split(line))
    return out


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "bash")], ids=lambda p: p.name)
def test_bash_lines_match_the_code(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_mmloss.experiments.cli import COMMANDS, import_class
    from lightning_mmloss.experiments.compare import _init_args, build_parser

    makefile = (ROOT / "Makefile").read_text()
    for argv in _commands(page):
        while argv and re.match(r"^[A-Z_]+=", argv[0]):  # an environment assignment before the command
            if argv[0] == "PYTHONPATH=examples":
                monkeypatch.syspath_prepend(str(ROOT / "examples"))
            argv = argv[1:]
        if argv[0] == "make":
            assert re.search(rf"^{argv[1]}:", makefile, re.M), argv
        elif argv[0] == "lightning-mmloss":
            assert argv[1] in COMMANDS, argv
            if argv[1] == "compare":
                parser = build_parser()
                args, extra = parser.parse_known_args(argv[2:])
                _init_args(extra, parser)  # --model.NAME / --data.NAME pairs only
                for path in (args.model, args.data if "." in args.data else None):
                    if path is not None:
                        import_class(path, "class")  # the class exists
                if args.data_dir is not None:
                    assert (ROOT / args.data_dir).is_dir() or "CI" not in __import__("os").environ, argv
            elif "--config" not in argv:
                import_class(argv[argv.index("--model") + 1], "--model")
            else:
                config = argv[argv.index("--config") + 1]
                assert (ROOT / config).is_file(), argv
                for a in argv:
                    if a.startswith("--ckpt_path"):
                        path = a.split("=", 1)[1] if "=" in a else argv[argv.index(a) + 1]
                        assert path in ("PATH", "lightning_logs/version_0/checkpoints/last.ckpt"), argv
        elif argv[0] in ("python", "torchrun"):
            script = next(a for a in argv if a.endswith(".py"))
            assert (ROOT / script).is_file(), argv
        else:
            raise AssertionError(f"{page.name}: no check for the command {argv}")


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p, "yaml")], ids=lambda p: p.name)
def test_yaml_blocks_are_includes_of_tested_configs(page: Path) -> None:
    for block in _blocks(page, "yaml"):
        m = SNIPPET.match(block.strip())
        assert m and (ROOT / m.group(1)).is_file(), block
