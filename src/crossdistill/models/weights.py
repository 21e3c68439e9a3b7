"""Weights in the layouts users download: crossdistill, torchvision, timm / DeiT, Hugging Face folders,
and self-supervised checkpoints (MoCo, BYOL, DINO, SimCLR, ...), read offline and without running code.

- Files: ``.safetensors`` (the ``safetensors`` package) or a ``torch.save`` file read with
  ``weights_only=True``. Wrappers (``state_dict``, ``model``, ``teacher``, ...) and nested dicts are
  flattened into dotted names, so a prefix (``module.encoder_q.``, ``teacher.backbone.``) is all that
  separates a backbone from the rest of a training checkpoint.
- Names: the zoo's ResNets and ``mobilenet_v2`` carry torchvision's names (its ``classifier.1`` is our
  ``fc``); the ViTs carry timm's. torchvision's ViT (``conv_proj``, ``encoder.layers.encoder_layer_N``,
  ``class_token``, ``heads.head``) and Hugging Face's ViT / DeiT (``vit.embeddings``, separate
  query/key/value) are renamed to timm's here.
- Layouts (``weights_layout``): ``auto`` (default: whatever fits), ``crossdistill``, ``torchvision``,
  ``timm`` (names as above, all keys must fit), ``hf`` (a Hugging Face folder or its weights file), ``ssl``
  (a backbone inside a self-supervised checkpoint: the prefix found or given, projection / prediction
  heads and other networks dropped, a missing classifier filled with zeros — a backbone has none).
- A Hugging Face folder (``config.json`` + ``model.safetensors``) of a ViT / DeiT becomes the zoo's
  :class:`~crossdistill.models.vit.VisionTransformer` (taps included); any other image classifier is
  wrapped through ``transformers`` (``pip install 'crossdistill[hf]'``), read with
  ``local_files_only=True`` and never ``trust_remote_code``: a folder that names its own code is refused.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from ..engine.checkpoint import FORMAT, load_file, load_into, student_state, validated_checkpoint
from ..errors import CheckpointError, ConfigError
from .vit import VisionTransformer

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "crossdistill", "torchvision", "timm", "hf", "ssl")
State = Dict[str, torch.Tensor]

#: Top-level heads of self-supervised and classification models, dropped with ``ssl`` / ``auto``.
HEAD_NAMES = ("fc", "head", "heads", "head_dist", "classifier", "projector", "predictor", "projection_head",
              "prediction_head", "projection", "prediction", "mlp_head", "pooler")
#: When several prefixes fit a backbone equally well, the network users want: DINO's teacher, MoCo's
#: query encoder, BYOL's online network; momentum / target copies last.
_PREFERRED = ("teacher", "encoder_q", "base_encoder", "online", "backbone", "encoder")
_AVOIDED = ("momentum", "encoder_k", "target", "student")


# ---------------------------------------------------------------------------------------------- reading


def is_model_folder(path: str | os.PathLike) -> bool:
    """A Hugging Face model folder: a directory with a ``config.json``."""
    p = Path(os.path.expanduser(path))
    return p.is_dir() and (p / "config.json").is_file()


def read_safetensors(path: Path) -> State:
    try:
        from safetensors.torch import load_file as load_safetensors
    except ImportError:
        raise ConfigError(f"'{path}' is a .safetensors file; reading it needs the safetensors package: "
                          "pip install safetensors (or 'crossdistill[hf]')") from None
    try:
        return load_safetensors(str(path), device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError for a damaged header
        line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"'{path}' is not a readable .safetensors file ({line}); check the file") from None


def read_state_dict(path: str | os.PathLike) -> State:
    """All tensors of a weights file (or of a Hugging Face folder's weights), as a flat ``{name: tensor}``."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        files = [p / "model.safetensors", p / "pytorch_model.bin"]
        index = p / "model.safetensors.index.json"
        if index.is_file():  # a sharded checkpoint: every shard the index lists
            shards = sorted(set(json.loads(index.read_text()).get("weight_map", {}).values()))
            state: State = {}
            for shard in shards:
                state.update(read_safetensors(p / shard))
            return state
        for f in files:
            if f.is_file():
                return read_state_dict(f)
        raise CheckpointError(f"folder '{p}' has no model.safetensors or pytorch_model.bin; give the folder "
                              "saved by save_pretrained, or a weights file")
    if not p.exists():
        raise CheckpointError(f"weights '{p}' do not exist; check the path")
    if p.suffix == ".safetensors":
        return read_safetensors(p)
    obj = load_file(p)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return student_state(validated_checkpoint(obj, p))
    if isinstance(obj, dict):
        # the usual wrappers of a training checkpoint (DeiT's "model", MoCo's "state_dict", ...); a file
        # with both "teacher" and "student" (DINO) stays whole, and a prefix picks the network
        wrapper = next((k for k in ("state_dict", "model", "net", "network") if isinstance(obj.get(k), dict)), None)
        if wrapper is None and isinstance(obj.get("student"), dict) and "teacher" not in obj:
            wrapper = "student"
        if wrapper is not None:
            obj = obj[wrapper]
    state = dict(flatten(obj))
    if not state:
        raise CheckpointError(f"'{p}' holds no tensors; give a state dict (a mapping of names to tensors)")
    return state


def flatten(obj: Any, prefix: str = "") -> Iterable[Tuple[str, torch.Tensor]]:
    """The tensors in nested dicts, named by their dotted path (``{"state_dict": {"a": t}}`` → ``state_dict.a``);
    other values (epochs, argument strings, optimiser numbers) are skipped."""
    if isinstance(obj, torch.Tensor):
        yield prefix.rstrip("."), obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}{k}.")


# ------------------------------------------------------------------------------------------- renaming

#: torchvision's ViT names ↔ the zoo's (timm's), as (torchvision, ours) templates: ``{i}`` is a block
#: index; a name ending in "." is a prefix, any other a whole key. Read left to right to load a
#: torchvision file, right to left to write one (:func:`to_torchvision`).
_TORCHVISION_VIT: List[Tuple[str, str]] = [
    ("conv_proj.", "patch_embed.proj."),
    ("class_token", "cls_token"),
    ("encoder.pos_embedding", "pos_embed"),
    ("encoder.layers.encoder_layer_{i}.ln_1.", "blocks.{i}.norm1."),
    ("encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight", "blocks.{i}.attn.qkv.weight"),
    ("encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias", "blocks.{i}.attn.qkv.bias"),
    ("encoder.layers.encoder_layer_{i}.self_attention.out_proj.", "blocks.{i}.attn.proj."),
    ("encoder.layers.encoder_layer_{i}.ln_2.", "blocks.{i}.norm2."),
    ("encoder.layers.encoder_layer_{i}.mlp.0.", "blocks.{i}.mlp.fc1."),
    ("encoder.layers.encoder_layer_{i}.mlp.3.", "blocks.{i}.mlp.fc2."),
    ("encoder.ln.", "norm."),
    ("heads.head.", "head."),
]
#: names that are read but never written: the MLP's layers in torchvision's newer files
_TORCHVISION_VIT_READ_ONLY: List[Tuple[str, str]] = [
    ("encoder.layers.encoder_layer_{i}.mlp.linear_1.", "blocks.{i}.mlp.fc1."),
    ("encoder.layers.encoder_layer_{i}.mlp.linear_2.", "blocks.{i}.mlp.fc2."),
]
_TORCHVISION_MOBILENET: Tuple[str, str] = ("classifier.1.", "fc.")  # MobileNetV2's head
_OLD_CROSSDISTILL: List[Tuple[str, str]] = [("stem.0.", "conv1."), ("stem.1.", "bn1.")]  # our ResNets before the torchvision names


def _rule(source: str, target: str) -> Tuple[re.Pattern, str]:
    """A (source, target) template pair as a (pattern, replacement) rule."""
    pattern = "^" + re.escape(source).replace(re.escape("{i}"), r"(\d+)") + ("" if source.endswith(".") else "$")
    return re.compile(pattern), target.replace("{i}", r"\1")


_RENAMES = [_rule(a, b) for a, b in _TORCHVISION_VIT + _TORCHVISION_VIT_READ_ONLY + [_TORCHVISION_MOBILENET]
            + _OLD_CROSSDISTILL]


def rename(key: str, own: Optional[set] = None) -> str:
    """A key of any supported layout → the zoo's name (the key itself if no rule applies, or if it is
    already one of the model's own names)."""
    if own is not None and key in own:
        return key
    for pattern, repl in _RENAMES:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def looks_like_hf(state: State) -> bool:
    return any(".embeddings.patch_embeddings.projection.weight" in k or k.startswith("embeddings.patch_embeddings.")
               for k in state)


def from_hf_vit(state: State) -> State:
    """Hugging Face ViT / DeiT names (``vit.embeddings…``, ``encoder.layer.N.attention.attention.query``;
    transformers 5's in-memory ``layers.N.attention.q_proj`` too) → timm's. Query, key and value are
    concatenated into ``qkv`` in that order."""
    base = next(k for k in state if "embeddings.patch_embeddings.projection.weight" in k)
    base = base[: base.index("embeddings.")]
    out: State = {}
    qkv: Dict[Tuple[int, str], Dict[str, torch.Tensor]] = {}
    block = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
    parts = {
        "attention.attention.query.": "q", "attention.attention.key.": "k", "attention.attention.value.": "v",
        "attention.q_proj.": "q", "attention.k_proj.": "k", "attention.v_proj.": "v",
    }
    names = {
        "attention.output.dense.": "attn.proj.", "attention.o_proj.": "attn.proj.",
        "layernorm_before.": "norm1.", "layernorm_after.": "norm2.",
        "intermediate.dense.": "mlp.fc1.", "output.dense.": "mlp.fc2.", "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2.",
    }
    top = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
           "embeddings.position_embeddings": "pos_embed"}
    for key, value in state.items():
        if key in ("classifier.weight", "classifier.bias", "cls_classifier.weight", "cls_classifier.bias"):
            out["head." + key.rsplit(".", 1)[1]] = value
            continue
        if key.startswith("distillation_classifier."):
            out["head_dist." + key.rsplit(".", 1)[1]] = value
            continue
        if not key.startswith(base):
            out[key] = value  # left for the mismatch report
            continue
        k = key[len(base):]
        if k in top:
            out[top[k]] = value
        elif k.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + k.rsplit(".", 1)[1]] = value
        elif k.startswith("layernorm."):
            out["norm." + k.rsplit(".", 1)[1]] = value
        elif k.startswith("pooler."):
            continue  # ViTModel's pooler: not part of the classifier's path
        elif (m := block.match(k)) is not None:
            i, rest = int(m.group(1)), m.group(2)
            for src, which in parts.items():
                if rest.startswith(src):
                    qkv.setdefault((i, rest[len(src):]), {})[which] = value
                    break
            else:
                for src, dst in names.items():
                    if rest.startswith(src):
                        out[f"blocks.{i}.{dst}{rest[len(src):]}"] = value
                        break
                else:
                    out[key] = value
        else:
            out[key] = value
    for (i, what), d in qkv.items():
        if set(d) != {"q", "k", "v"}:
            raise CheckpointError(f"block {i} has only {sorted(d)} of query/key/value {what}; the file is incomplete")
        out[f"blocks.{i}.attn.qkv.{what}"] = torch.cat([d["q"], d["k"], d["v"]], dim=0)
    return out


def to_torchvision(state: State) -> State:
    """The zoo's names → torchvision's (ViT-B/16's ``conv_proj``…, MobileNetV2's ``classifier.1``; the
    ResNets' are the same): what torchvision's ``load_state_dict`` reads. The renaming tables read
    backwards."""
    if "patch_embed.proj.weight" in state:
        rules = [_rule(ours, tv) for tv, ours in _TORCHVISION_VIT]
    elif any(k.startswith("features.") for k in state):
        rules = [_rule(_TORCHVISION_MOBILENET[1], _TORCHVISION_MOBILENET[0])]
    else:
        rules = []
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            new, n = pattern.subn(repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


# -------------------------------------------------------------------------------------------- fitting


def best_prefix(keys: Iterable[str], own: set) -> Tuple[str, int]:
    """The prefix whose removal (and renaming) makes the most keys the model's own, and how many."""
    counts: Counter = Counter()
    for key in keys:
        parts = key.split(".")
        for i in range(len(parts)):
            if rename(".".join(parts[i:]), own) in own:
                counts[".".join(parts[:i]) + ("." if i else "")] += 1
    if not counts:
        return "", 0

    def rank(item):
        prefix, n = item
        tokens = prefix.lower()
        preferred = next((len(_PREFERRED) - j for j, t in enumerate(_PREFERRED) if t in tokens), 0)
        avoided = any(t in tokens for t in _AVOIDED)
        return n, not avoided, preferred, -len(prefix)

    prefix, n = max(counts.items(), key=rank)
    return prefix, n


def fit_state(model: nn.Module, state: State, layout: str = "auto", strip_prefix: Optional[str] = None,
              source: str = "") -> Tuple[State, List[str]]:
    """``state`` in the model's own names (plus notes on what was dropped or filled), per ``layout``."""
    if layout not in LAYOUTS:
        raise ConfigError(f"weights_layout '{layout}' is unknown: valid choices: {', '.join(LAYOUTS)}")
    own_state = model.state_dict()
    own = set(own_state)
    notes: List[str] = []
    if layout in ("auto", "hf") and looks_like_hf(state):
        state = from_hf_vit(state)
    if strip_prefix:
        kept = {k[len(strip_prefix):]: v for k, v in state.items() if k.startswith(strip_prefix)}
        if not kept:
            raise CheckpointError(f"no key of '{source}' starts with strip_prefix '{strip_prefix}' (its keys start "
                                  f"like {sorted({k.split('.')[0] + '.' for k in state})[:4]}); fix strip_prefix")
        state = kept
    elif layout in ("auto", "ssl", "timm", "torchvision", "crossdistill"):
        direct = sum(rename(k, own) in own for k in state)
        prefix, n = best_prefix(state, own)
        generic = ("module.", "model.", "state_dict.", "state_dict.module.", "model.module.", "student.")
        if prefix and n > direct and (layout in ("auto", "ssl") or prefix in generic):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            notes.append(f"read the network under '{prefix}'")
    state = {rename(k, own): v for k, v in state.items()}
    if layout in ("auto", "ssl"):
        head_path = getattr(model, "classifier", "") or ""
        heads = [k for k in state if k not in own and k.split(".")[0] in HEAD_NAMES]
        if heads and (layout == "ssl" or len(heads) < len(state)):
            for k in heads:
                del state[k]
            notes.append(f"dropped {len(heads)} head tensors ({', '.join(sorted({k.split('.')[0] for k in heads}))})")
        if head_path:
            mine = [k for k in own if k.startswith(head_path + ".")]
            wrong = [k for k in mine if k in state and state[k].shape != own_state[k].shape]
            absent = [k for k in mine if k not in state]
            # ssl: any missing or mis-shaped classifier (a 128-d projection in its place); auto: only a
            # classifier that is wholly absent — a mis-shaped one is the user's num_classes, reported below
            if mine and (absent or wrong) and (layout == "ssl" or len(absent) == len(mine)) and \
                    sum(k in state for k in own if not k.startswith(head_path + ".")) > 0:
                for k in mine:  # a backbone has no classifier; zeros make it plain that this one is untrained
                    state[k] = torch.zeros_like(own_state[k])
                notes.append(f"no classifier '{head_path}' in the file: filled with zeros (use the teacher's "
                             "features, e.g. @pooled, not its logits)")
        if layout == "ssl":
            extra = [k for k in state if k not in own]
            for k in extra:
                del state[k]
    return state, notes


def load_weights(model: nn.Module, path: str | os.PathLike, what: str, layout: str = "auto",
                 strip_prefix: Optional[str] = None) -> nn.Module:
    """Read ``path`` (file or Hugging Face folder) in ``layout`` into ``model``; one line on a mismatch."""
    source = str(path)
    state, notes = fit_state(model, read_state_dict(path), layout, strip_prefix, source)
    load_into(model, state, what, source)
    for note in notes:
        log.info("%s from '%s': %s", what, source, note)
    return model


# -------------------------------------------------------------------------------- Hugging Face folders


def model_from_folder(path: str | os.PathLike, what: str, in_channels: Optional[int] = None,
                      num_classes: Optional[int] = None) -> nn.Module:
    """The network of a Hugging Face folder, with its weights: the zoo's ViT for ``vit`` / ``deit``
    configs, else the ``transformers`` model wrapped as :class:`HFImageClassifier`."""
    p = Path(os.path.expanduser(path))
    try:
        config = json.loads((p / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot read '{p / 'config.json'}' ({e}); give a folder saved by save_pretrained") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{what}: '{p / 'config.json'}' is not a JSON object")
    if config.get("auto_map"):
        raise ConfigError(f"{what}: '{p}' names its own Python code (auto_map in config.json); crossdistill never "
                          "runs code from a model folder — convert it to a state dict of a zoo model instead")
    classes = config.get("num_labels") or len(config.get("id2label") or {}) or None
    if num_classes is not None and classes is not None and num_classes != classes:
        raise ConfigError(f"{what}: num_classes is {num_classes} but the model in '{p}' has {classes} labels; "
                          "remove num_classes (the folder gives it)")
    channels = int(config.get("num_channels", 3))
    if in_channels is not None and channels != in_channels:
        raise ConfigError(f"{what}: the model in '{p}' reads {channels}-channel images but the data has "
                          f"{in_channels}; use a teacher input view or another model")
    kind = config.get("model_type")
    # HF's DeiT always has a distillation token; only its WithTeacher model also has the second head
    distilled = any("WithTeacher" in a for a in config.get("architectures") or [])
    if (kind == "vit" or (kind == "deit" and distilled)) and config.get("hidden_act", "gelu") == "gelu" and classes:
        hidden = int(config["hidden_size"])
        model = VisionTransformer(
            num_classes=classes, in_channels=channels, img_size=int(config.get("image_size", 224)),
            patch_size=int(config.get("patch_size", 16)), embed_dim=hidden, depth=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]), mlp_ratio=int(config["intermediate_size"]) / hidden,
            qkv_bias=bool(config.get("qkv_bias", True)), distilled=distilled,
            eps=float(config.get("layer_norm_eps", 1e-12)))
        return load_weights(model, p, what, "hf")
    return HFImageClassifier.from_folder(p, what)


class HFImageClassifier(nn.Module):
    """A ``transformers`` image classifier as a teacher: ``forward(x)`` returns its logits. It has no
    taps of the zoo's kind (the ViT / DeiT folders become zoo models, which do)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.feature_layers: tuple[str, ...] = ()

    @classmethod
    def from_folder(cls, path: Path, what: str) -> "HFImageClassifier":
        try:
            from transformers import AutoModelForImageClassification
        except Exception:
            raise ConfigError(f"{what}: '{path}' is a Hugging Face model that the zoo does not hold; reading it needs "
                              "transformers: pip install 'crossdistill[hf]'") from None
        try:
            body = AutoModelForImageClassification.from_pretrained(str(path), local_files_only=True,
                                                                   trust_remote_code=False)
        except Exception as e:
            line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{what}: transformers cannot read '{path}' ({line[:160]})") from None
        return cls(body.eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(pixel_values=x).logits


# ------------------------------------------------------------------------------------- the one entry


def load_model_weights(model: Optional[nn.Module], path: str, what: str, layout: str = "auto",
                       strip_prefix: Optional[str] = None, in_channels: Optional[int] = None,
                       num_classes: Optional[int] = None) -> nn.Module:
    """What build.py calls for ``weights:`` / ``student.checkpoint``: ``model`` (built from the config)
    with the weights of ``path`` — or, when ``model`` is None and ``path`` is a Hugging Face folder,
    the folder's own network."""
    if model is None:
        if not is_model_folder(path):
            raise ConfigError(f"{what} needs model: NAME for the weights file '{path}' (only a Hugging Face "
                              "folder with config.json brings its own network)")
        if layout not in ("auto", "hf"):
            raise ConfigError(f"{what}: '{path}' is a Hugging Face folder; give weights_layout: hf (or auto)")
        return model_from_folder(path, what, in_channels, num_classes)
    return load_weights(model, path, what, layout, strip_prefix)
