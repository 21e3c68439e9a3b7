#!/usr/bin/env bash
# Fetch a real pretrained image-translation network that nobody here trained: the CycleGAN ResNet
# generator (9 blocks, ngf=64, affine InstanceNorm) shipped in the MIT-licensed PyPI package
# `vintagify`. Only its weights file is extracted (the package itself imports torchvision and is
# never installed). Used by configs/ltp/scenes_depth_vintagify_teacher.yaml.
set -euo pipefail
DEST=${1:-$HOME/data/vintagify}
mkdir -p "$DEST"
TMP=$(mktemp -d)
python3 -m pip download -q --no-deps vintagify -d "$TMP"
python3 - "$TMP" "$DEST" <<'PY'
import glob, sys, zipfile
whl = glob.glob(f"{sys.argv[1]}/vintagify-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("G_A2B_epoch33.pth"))
    with z.open(name) as src, open(f"{sys.argv[2]}/G_A2B_epoch33.pth", "wb") as dst:
        dst.write(src.read())
print(f"wrote {sys.argv[2]}/G_A2B_epoch33.pth")
PY
rm -rf "$TMP"
