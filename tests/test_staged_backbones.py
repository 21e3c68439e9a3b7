"""The CIFAR zoo on one staged-backbone base (``models/staged.py``): state-dict keys, shapes, the seeded
initialisation and the outputs are what they were before the base existed (``data/cifar_backbones.json``
was written from the models as they stood then), so existing checkpoints still load."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from crossdistill.models import create_model
from crossdistill.models.staged import StagedBackbone

REFERENCE = json.loads((Path(__file__).parent / "data" / "cifar_backbones.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_keys_init_and_outputs_are_unchanged(name):
    ref = REFERENCE[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    assert isinstance(model, StagedBackbone)
    sd = model.state_dict()
    lines = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in sd.items())
    assert len(sd) == ref["keys"] and list(sd)[:3] == ref["first_keys"] and list(sd)[-3:] == ref["last_keys"]
    assert hashlib.sha256(lines.encode()).hexdigest() == ref["keys_sha256"], f"{name}: state-dict keys or shapes changed"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x)
    assert y[0, :4].tolist() == pytest.approx(ref["output"], rel=1e-3, abs=1e-4)
    assert float(y.abs().sum()) == pytest.approx(ref["output_abs_sum"], rel=1e-4)


def test_declarations_are_read_from_the_base():
    wrn, v2, r8 = (create_model(n, num_classes=10) for n in ("wrn_16_2", "shufflenetv2", "resnet8"))
    assert wrn.feature_layers == v2.feature_layers == r8.feature_layers == ("layer1", "layer2", "layer3")
    assert (wrn.neck, v2.neck, r8.neck) == ("bn_relu", "last_conv", None)
    assert r8.preact_layers == ("layer1.0.relu2:input", "layer2.0.relu2:input", "layer3.0.relu2:input")
    assert create_model("vgg8", num_classes=10).preact_layers == ()  # AB then reads the stages
    assert all(m.pooled_layer == "pool" and m.classifier == "fc" for m in (wrn, v2, r8))
