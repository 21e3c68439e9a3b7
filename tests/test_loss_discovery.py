"""Losses are discovered like methods: each module of ``crossdistill.losses`` declares ``__all__`` and the
package re-exports it, so a new loss family is one new file."""
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import crossdistill
import crossdistill.losses as losses


def test_the_package_exports_exactly_its_modules_all():
    expected = []
    for info in pkgutil.iter_modules(losses.__path__):
        module = importlib.import_module(f"crossdistill.losses.{info.name}")
        assert isinstance(module.__all__, list) and module.__all__, info.name
        for name in module.__all__:
            assert callable(getattr(module, name)), f"{info.name}.{name}"
            assert getattr(losses, name) is getattr(module, name)
            assert losses.FAMILIES[name] == module.__name__
        expected += module.__all__
    assert sorted(losses.__all__) == sorted(expected)
    assert {"kd_loss", "crd_nce_loss", "hint_loss", "linear_cka", "nt_xent_loss"} <= set(losses.__all__)


def _package_copy(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(Path(crossdistill.__file__).parent, root / "crossdistill",
                    ignore=shutil.ignore_patterns("__pycache__", "configs"))
    return root


def _run(root: Path, code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_a_new_loss_module_is_exported_without_editing_the_package(tmp_path):
    root = _package_copy(tmp_path)
    (root / "crossdistill" / "losses" / "mine.py").write_text(
        '"""A new family."""\nimport torch\n\n__all__ = ["mine_loss"]\n\n\n'
        "def mine_loss(a, b):\n    return (a - b).abs().mean()\n\n\ndef _helper():\n    pass\n")
    r = _run(root, "import crossdistill, torch\nfrom crossdistill.losses import mine_loss, kd_loss\n"
                   "import crossdistill.losses as L\nassert '_helper' not in L.__all__ and crossdistill.__file__.startswith("
                   f"{str(root)!r})\nprint(float(mine_loss(torch.ones(2), torch.zeros(2))))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1.0"


def test_a_module_without_all_or_a_name_clash_fails_on_import_naming_it(tmp_path):
    root = _package_copy(tmp_path)
    new = root / "crossdistill" / "losses" / "mine.py"
    new.write_text("def mine_loss(a, b):\n    return a\n")
    r = _run(root, "import crossdistill.losses")
    assert r.returncode != 0 and "crossdistill.losses.mine has no __all__" in r.stderr
    new.write_text('__all__ = ["kd_loss"]\n\n\ndef kd_loss(a, b):\n    return a\n')
    r = _run(root, "import crossdistill.losses")
    assert r.returncode != 0 and "loss 'kd_loss' is exported by both" in r.stderr
