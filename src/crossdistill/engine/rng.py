"""Capture and restore every global random stream a training step may draw from.

Under DDP each rank has its own streams (a method may draw a data-dependent number of values), so
a checkpoint holds one state per rank and each rank resumes from its own.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List

import numpy as np
import torch
import torch.distributed as dist


def rng_state() -> Dict[str, Any]:
    """Every global RNG of this process, as tensors and plain values (weights_only-loadable)."""
    np_state = None
    try:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        np_state = {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                    "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:
        pass
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(), "numpy": np_state}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("numpy") is not None:
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["gauss"]))


def rng_states_of_all_ranks(world: int) -> List[Dict[str, Any]]:
    """This process's state on one process; every rank's state (in rank order) under DDP.
    A collective: every rank must call it."""
    mine = rng_state()
    if world <= 1:
        return [mine]
    gathered: List[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return gathered


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    try:
        np.random.seed(seed % 2**32)
    except ImportError:
        pass
