"""docs/architecture.md's "adding a method", literally: one file in a temporary plugin package (plus the
entry point its package declares) and nothing else — the method then appears in ``crossdistill list
methods``, in the generated methods table, and trains from a YAML recipe. All through the real CLI."""
import json
import os
import subprocess
import sys
import textwrap

METHOD_FILE = textwrap.dedent('''
    """MyMethod — Someone 2025: regress the teacher's last stage through an inverted projector."""
    from typing import Literal

    from crossdistill.losses import hint_loss
    from crossdistill.methods import Method, register_method
    from crossdistill.methods.base import Positive
    from crossdistill.projectors import Projector


    @register_method("mymethod")
    class MyMethod(Method):
        paper = "Someone et al., NoVenue 2025 — A Method Added by One File"
        year = 2025
        kind = "features"
        default_weight = 1.0
        default_student = "@stage:-1"
        default_teacher = "@stage:-1"

        def __init__(self, projector: Literal["standard", "inverted"] = "inverted", scale: Positive = 1.0, **sides):
            super().__init__(**sides)
            self.direction, self.scale = projector, scale

        def build(self, s, t):  # s, t: lists of tensors from one dry run
            self.projector = Projector(s[0].shape[1:], t[0].shape[1:], self.direction)

        def forward(self, s, t, batch):
            return self.scale * hint_loss(*self.projector(s[0], t[0]))
''')

RECIPE = """
name: plugin-method
seed: 0
output_dir: {out}
data:
  name: shapes
  options: {{num_classes: 4, image_size: 16, train_size: 64, test_size: 32}}
  batch_size: 16
student: {{name: resnet8}}
teachers:
  default: {{model: resnet8, num_classes: 4, random_init: true}}
distill:
  terms:
    - {{method: mymethod, scale: 2.0}}
train: {{epochs: 1, max_steps_per_epoch: 3, log_every: 1, device: cpu, precision: fp32, threads: 1, progress: false}}
"""


def _plugin_package(root):
    """A package with the method's one file, installed the way pip would (a dist-info with its entry point)."""
    pkg = root / "my_methods"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mymethod.py").write_text(METHOD_FILE)
    info = root / "my_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[crossdistill.methods]\nmymethod = my_methods.mymethod:MyMethod\n")


def _cli(args, root):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
               CROSSDISTILL_PLUGINS="mymethod")
    return subprocess.run([sys.executable, "-m", "crossdistill.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=root)


def test_a_method_in_one_plugin_file_is_listed_tabled_and_trains(tmp_path):
    _plugin_package(tmp_path)

    listed = _cli(["list", "methods"], tmp_path)
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.split()[0] == "mymethod")
    assert "features" in line and "2025" in line and "inverted projector" in line

    table = _cli(["list", "methods", "--markdown"], tmp_path)
    assert table.returncode == 0, table.stderr
    row = next(x for x in table.stdout.splitlines() if x.startswith("| `mymethod` |"))
    assert "| features | 2025 | Someone et al., NoVenue 2025 — A Method Added by One File |" in row
    assert "`@stage:-1`" in row and "| 1 |" in row

    (tmp_path / "recipe.yaml").write_text(RECIPE.format(out=tmp_path / "run"))
    trained = _cli(["train", str(tmp_path / "recipe.yaml")], tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "mymethod" in r]
    assert len(steps) >= 3 and all(r["mymethod"] >= 0 for r in steps)
    assert (tmp_path / "run" / "student.pt").is_file()
