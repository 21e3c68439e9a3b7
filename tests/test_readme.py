"""The README's Python example runs as written: the block is extracted and executed as it stands,
nothing defined for it beforehand."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) == 1, "one Python example in the README; test any new one here"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    namespace = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    assert set(namespace["parts"]) >= {"task", "kd", "fitnet", "fitnet/transfer", "fitnet/spectral"}
    saved = torch.load(tmp_path / "student.pt", weights_only=True)
    assert not any(k.startswith(("teachers", "terms")) for k in saved)
