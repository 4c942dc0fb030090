"""The plugin core never imports the experiment harness (nor its dependency jsonargparse)."""

from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_experiment_module() -> None:
    code = (
        "import sys\n"
        "import lightning_mmloss\n"
        "from lightning_mmloss import MultiModalLoss, MultiModalLossMixin, SubgroupMonitor, TemperatureFit\n"
        "import lightning_mmloss.functional, lightning_mmloss.metrics, lightning_mmloss.callbacks\n"
        "bad = sorted(m for m in sys.modules if m.startswith('lightning_mmloss.experiments') or m == 'jsonargparse')\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "", out.stdout


def _declared() -> tuple[set[str], set[str]]:
    """Distribution names of the package's dependencies and of its ``experiments`` extra (lower case).

    Read from the installed metadata, which ``make`` refreshes whenever pyproject.toml changes.
    """
    import re
    from importlib.metadata import requires

    core, experiments = set(), set()
    for req in requires("lightning-mmloss") or []:
        name = re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower().replace("_", "-")
        if "extra ==" not in req:
            core.add(name)
        elif re.search(r"extra == ['\"]experiments['\"]", req):
            experiments.add(name)
    return core, experiments


def test_every_imported_third_party_package_is_declared() -> None:
    """Each top-level module the package imports is stdlib, our own, or a declared distribution (issue 16)."""
    import ast
    from importlib.metadata import packages_distributions
    from pathlib import Path

    core, experiments = _declared()
    dists = packages_distributions()
    root = Path(__file__).resolve().parents[2] / "lightning_mmloss"
    missing = []
    for path in sorted(root.rglob("*.py")):
        allowed = core | experiments if "experiments" in path.parts else core
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in ("__future__", "lightning_mmloss"):
                    continue
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not owners & allowed:
                    missing.append(f"{path.relative_to(root.parent)}: {top} ({sorted(owners)})")
    assert not missing, missing
