"""The README's Python example runs as written (with a one-batch loader)."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    loader = [(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))]
    namespace = {"loader": loader}
    exec(compile(code, str(README), "exec"), namespace)
    assert set(namespace["parts"]) >= {"task", "kd", "fitnet", "fitnet/transfer", "fitnet/spectral"}
    saved = torch.load(tmp_path / "student.pt", weights_only=True)
    assert not any(k.startswith(("teachers", "terms")) for k in saved)
