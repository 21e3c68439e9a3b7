"""``"scenes"``: a built-in multi-task scene generator (classification, segmentation, depth,
image translation) that needs no files.

**What it draws.** Each sample is a small 3-D scene, ray-cast exactly (one ray per pixel,
vectorised in torch): a pinhole camera at a random height, pitched down by a random angle, looks
over a ground plane. Indoor scenes are closed by a back wall and two side walls; outdoor scenes have
a sky and a ground that recedes to the horizon. On the ground stand 2–6 objects of four
categories — box (rotated about the vertical), sphere, cylinder, cone — at random positions and
sizes; nearer objects occlude farther ones and their image size falls as 1/depth because that is
what perspective projection does. The ground has a world-space checker texture (its tiles shrink
with distance), surfaces are Lambert-shaded with a random sun direction, objects cast shadows
(shadow rays), objects have a specular highlight, and distance fog fades far surfaces into the
horizon colour; pixel noise is added last.

**The fields.**

- ``label``: the scene class = the *composition*: which object category is the strict majority
  among the objects (with more than 4 classes also indoor vs. outdoor, with more than 8 also few
  vs. many objects). Occlusion can hide objects, so a few labels are genuinely hard.
- ``mask``: semantic category per pixel, 7 classes: 0 sky, 1 floor, 2 wall, 3 box, 4 sphere,
  5 cylinder, 6 cone.
- ``depth``: the camera z-depth of the hit point in metres; 0 (invalid) for sky and for ground
  farther than 20 m (like a depth sensor's range limit).
- ``translation``: the same scene restyled: relit from a *fixed* light direction (independent of
  the input's random sun) with cel-shaded (quantised) diffuse light, no shadows, no noise, a colour
  remapping of the albedo, a depth-dependent tint of another colour, a dusk sky, and dark outlines
  along object/surface boundaries. Producing it from the input means recovering albedo, surface
  normals, depth and boundaries — a non-trivial image-to-image mapping.

**Why the tasks are related but different.** All four targets are functions of one latent
geometry (objects, their categories, surface normals, distances): depth and normals drive the input
shading, the texture scale, fog and the translation's bands and tint; categories drive the mask and
the class; so a network that learns one task learns features useful for the others (what cross-task
distillation needs). Yet each task reads a different part: the class is a global count, the mask is
per-pixel category, depth is metric geometry, translation is appearance. A teacher trained on one
has both transferable and task-specific features.

Everything is deterministic given ``seed`` (train and test use different random streams) and
rendered at construction; images are stored as uint8, depth as float32.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from ..errors import ConfigError
from .procedural import single_thread, stream_seed
from .registry import DatasetInfo, register_dataset
from .wrappers import InMemoryDataset, check_split, positive_int, resolve_options

SEG_CLASSES = ("sky", "floor", "wall", "box", "sphere", "cylinder", "cone")
OBJECTS = ("box", "sphere", "cylinder", "cone")
NUM_SEG_CLASSES = len(SEG_CLASSES)
MAX_OBJECTS = 6
MAX_DEPTH = 20.0
EPS = 1e-4
_INF = float("inf")

# fixed style of the translation target
_L2 = torch.tensor([-0.55, 0.6, -0.58]) / torch.tensor([-0.55, 0.6, -0.58]).norm()
_LIGHT2 = torch.tensor([1.0, 0.88, 0.72]).view(1, 3, 1)
_HAZE2 = torch.tensor([0.42, 0.32, 0.55]).view(1, 3, 1)
_SKY2_LOW = torch.tensor([0.98, 0.62, 0.42]).view(1, 3, 1)
_SKY2_HIGH = torch.tensor([0.22, 0.18, 0.42]).view(1, 3, 1)
_OBJECT_HUES = (0.08, 0.0, 0.6, 0.33)


# --------------------------------------------------------------------------- scene sampling

def _hsv(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """HSV → RGB, any shape → shape + (3,)."""
    h = (h % 1.0) * 6.0
    k = torch.stack([(5 + h) % 6, (3 + h) % 6, (1 + h) % 6], dim=-1)
    f = torch.minimum(k, 4 - k).clamp(0, 1)
    return v[..., None] - (v * s)[..., None] * f


def sample_scenes(labels: Tensor, num_classes: int, g: torch.Generator) -> Dict[str, Tensor]:
    """Random scene parameters for each label (all tensors, leading dim N)."""
    n, k = labels.numel(), MAX_OBJECTS

    def U(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)

    def coin(*shape: int) -> Tensor:
        return torch.rand(*(shape or (n,)), generator=g) < 0.5

    dominant = labels % 4
    indoor = ((labels // 4) % 2 == 0) if num_classes > 4 else coin()
    many = ((labels // 8) % 2 == 1) if num_classes > 8 else coin()
    n_obj = torch.where(many, torch.randint(4, 7, (n,), generator=g), torch.randint(2, 4, (n,), generator=g))
    slot = torch.arange(k).view(1, k)
    n_dom = n_obj // 2 + 1                                   # a strict majority
    other = (dominant.view(n, 1) + 1 + torch.randint(0, 3, (n, k), generator=g)) % 4
    cat = torch.where(slot < n_dom.view(n, 1), dominant.view(n, 1), other)
    cat = torch.where(slot < n_obj.view(n, 1), cat, torch.full_like(cat, -1))

    p: Dict[str, Tensor] = {"label": labels, "indoor": indoor, "cat": cat}
    p["cam_h"] = U(1.3, 1.9)
    p["pitch"] = U(math.radians(8), math.radians(22))
    p["wall_d"] = U(8.0, 12.0)
    p["wall_w"] = U(3.0, 5.0)
    # objects
    z = U(2.5, 9.0, n, k)
    z = torch.where(indoor.view(n, 1), torch.minimum(z, p["wall_d"].view(n, 1) - 1.2), z)
    r = U(0.3, 0.7, n, k)
    x = U(-1.0, 1.0, n, k) * z * math.tan(math.radians(30)) * 0.8
    lim = (p["wall_w"].view(n, 1) - r - 0.1)
    x = torch.where(indoor.view(n, 1), torch.maximum(torch.minimum(x, lim), -lim), x)
    p["obj_x"], p["obj_z"], p["obj_r"] = x, z, r
    p["obj_h"] = U(0.6, 1.8, n, k)
    p["obj_hz"] = r * U(0.6, 1.4, n, k)
    p["obj_yaw"] = U(0.0, math.pi / 2, n, k)
    base_hue = torch.tensor(_OBJECT_HUES)[cat.clamp(min=0)]
    hue = torch.where(coin(n, k), base_hue + U(-0.05, 0.05, n, k), U(0.0, 1.0, n, k))
    p["obj_rgb"] = _hsv(hue, U(0.4, 0.9, n, k), U(0.5, 0.95, n, k))          # [N, K, 3]
    # surroundings
    p["floor_rgb"] = _hsv(U(0, 1), U(0.15, 0.5), U(0.45, 0.8))
    p["floor_rgb2"] = p["floor_rgb"] * U(0.55, 0.8).view(n, 1)
    p["tile"] = U(0.5, 1.2)
    p["wall_rgb"] = _hsv(U(0, 1), U(0.1, 0.4), U(0.6, 0.9))
    p["sky_top"] = torch.stack([U(0.15, 0.35), U(0.35, 0.55), U(0.75, 0.95)], -1)
    p["sky_low"] = torch.stack([U(0.75, 0.9), U(0.8, 0.92), U(0.9, 1.0)], -1)
    az, el = U(0, 2 * math.pi), U(math.radians(30), math.radians(65))
    p["light"] = torch.stack([el.cos() * az.sin(), el.sin(), el.cos() * az.cos()], -1)
    p["light_rgb"] = torch.stack([torch.ones(n), U(0.88, 1.0), U(0.75, 1.0)], -1)
    p["ambient"] = U(0.25, 0.4)
    p["fog"] = torch.where(indoor, U(40.0, 80.0), U(25.0, 50.0))
    p["noise"] = U(0.005, 0.03)
    return p


# --------------------------------------------------------------------------- ray–primitive tests
# o*: ray origins, d*: directions (broadcastable, [M, P] or [M, 1]); object parameters [M, 1].
# Each returns the ray parameter t of the nearest hit with t > EPS, or +inf.

def _pick(t0: Tensor, t1: Tensor, ok0: Tensor, ok1: Tensor) -> Tensor:
    inf = torch.full_like(t0, _INF)
    t0 = torch.where(ok0 & (t0 > EPS), t0, inf)
    t1 = torch.where(ok1 & (t1 > EPS), t1, inf)
    return torch.minimum(t0, t1)


def _quadratic(a: Tensor, b: Tensor, c: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Both roots (numerically stable form) and whether they exist."""
    disc = b * b - 4 * a * c
    sq = disc.clamp(min=0).sqrt()
    q = -0.5 * (b + torch.where(b >= 0, sq, -sq))
    q = torch.where(q == 0, torch.full_like(q, 1e-12), q)
    t0, t1 = q / a, c / q
    return t0, t1, disc >= 0


def _hit_sphere(ox, oy, oz, dx, dy, dz, X, Z, r, h, hz, yaw):
    cx, cy, cz = ox - X, oy - r, oz - Z
    a = dx * dx + dy * dy + dz * dz
    b = 2 * (cx * dx + cy * dy + cz * dz)
    c = cx * cx + cy * cy + cz * cz - r * r
    t0, t1, ok = _quadratic(a, b, c)
    return _pick(t0, t1, ok, ok)


def _hit_cylinder(ox, oy, oz, dx, dy, dz, X, Z, r, h, hz, yaw):
    cx, cz = ox - X, oz - Z
    a = (dx * dx + dz * dz).clamp(min=1e-12)
    b = 2 * (cx * dx + cz * dz)
    c = cx * cx + cz * cz - r * r
    t0, t1, ok = _quadratic(a, b, c)
    y0, y1 = oy + t0 * dy, oy + t1 * dy
    side = _pick(t0, t1, ok & (y0 >= 0) & (y0 <= h), ok & (y1 >= 0) & (y1 <= h))
    tc = (h - oy) / dy
    ux, uz = cx + tc * dx, cz + tc * dz
    cap = torch.where((ux * ux + uz * uz <= r * r) & (tc > EPS), tc, torch.full_like(tc, _INF))
    return torch.minimum(side, cap)


def _hit_cone(ox, oy, oz, dx, dy, dz, X, Z, r, h, hz, yaw):
    k2 = (r / h) ** 2
    cx, cz = ox - X, oz - Z
    oY, dY = h - oy, -dy
    a = dx * dx + dz * dz - k2 * dY * dY
    a = torch.where(a.abs() < 1e-9, torch.full_like(a, 1e-9), a)
    b = 2 * (cx * dx + cz * dz - k2 * oY * dY)
    c = cx * cx + cz * cz - k2 * oY * oY
    t0, t1, ok = _quadratic(a, b, c)
    Y0, Y1 = oY + t0 * dY, oY + t1 * dY
    return _pick(t0, t1, ok & (Y0 >= 0) & (Y0 <= h), ok & (Y1 >= 0) & (Y1 <= h))


def _hit_box(ox, oy, oz, dx, dy, dz, X, Z, r, h, hz, yaw):
    cs, sn = torch.cos(yaw), torch.sin(yaw)
    qx, qy, qz = ox - X, oy - h / 2, oz - Z
    lox, loz = cs * qx - sn * qz, sn * qx + cs * qz
    ldx, ldz = cs * dx - sn * dz, sn * dx + cs * dz
    near, far = None, None
    for o, d, half in ((lox, ldx, r), (qy, dy, h / 2), (loz, ldz, hz)):
        d = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
        inv = 1.0 / d
        ta, tb = (-half - o) * inv, (half - o) * inv
        lo, hi = torch.minimum(ta, tb), torch.maximum(ta, tb)
        near = lo if near is None else torch.maximum(near, lo)
        far = hi if far is None else torch.minimum(far, hi)
    hit = (near <= far) & (far > EPS)
    t = torch.where(near > EPS, near, far)
    return torch.where(hit, t, torch.full_like(t, _INF))


_HITS = (_hit_box, _hit_sphere, _hit_cylinder, _hit_cone)
_PARAMS = ("obj_x", "obj_z", "obj_r", "obj_h", "obj_hz", "obj_yaw")


def _object_normals(px, py, pz, cat, X, Z, r, h, hz, yaw):
    """Outward unit normals of the hit objects (all [N, P]); ``cat`` is the object category."""
    qx, qz = px - X, pz - Z
    # sphere
    sx, sy, sz = qx, py - r, qz
    # cylinder: cap or side
    on_cap = py > h - 1e-3
    zero = torch.zeros_like(px)
    cyx, cyy, cyz = torch.where(on_cap, zero, qx), torch.where(on_cap, torch.ones_like(px), zero), torch.where(on_cap, zero, qz)
    # cone: gradient of rho^2 - k^2 (h - y)^2
    k2 = (r / h) ** 2
    cox, coy, coz = qx, k2 * (h - py), qz
    # box: the face whose normalised coordinate is largest
    cs, sn = torch.cos(yaw), torch.sin(yaw)
    lx, ly, lz = cs * qx - sn * qz, py - h / 2, sn * qx + cs * qz
    rx, ry, rz = lx.abs() / r, ly.abs() / (h / 2), lz.abs() / hz
    fx = (rx >= ry) & (rx >= rz)
    fy = ~fx & (ry >= rz)
    fz = ~fx & ~fy
    nlx, nly, nlz = fx * lx.sign(), fy * ly.sign(), fz * lz.sign()
    bx, by, bz = cs * nlx + sn * nlz, nly, -sn * nlx + cs * nlz
    sel = [cat == i for i in range(4)]
    nx = torch.where(sel[0], bx, torch.where(sel[1], sx, torch.where(sel[2], cyx, cox)))
    ny = torch.where(sel[0], by, torch.where(sel[1], sy, torch.where(sel[2], cyy, coy)))
    nz = torch.where(sel[0], bz, torch.where(sel[1], sz, torch.where(sel[2], cyz, coz)))
    norm = torch.sqrt(nx * nx + ny * ny + nz * nz).clamp(min=1e-8)
    return nx / norm, ny / norm, nz / norm


def _cast_objects(p: Dict[str, Tensor], ox, oy, oz, dx, dy, dz, any_hit: bool = False):
    """Nearest object hit per pixel → (t [N,P], slot [N,P]); or, with ``any_hit``, a bool [N,P]."""
    n, k = p["cat"].shape
    P = max(t.shape[-1] for t in (ox, oy, oz, dx, dy, dz))
    if any_hit:
        hits = torch.zeros(n, P)
    else:
        t_all = torch.full((n, k, P), _INF)
    for c, fn in enumerate(_HITS):
        img, slot = (p["cat"] == c).nonzero(as_tuple=True)
        if img.numel() == 0:
            continue
        rays = [t[img] if t.shape[0] == n else t for t in (ox, oy, oz, dx, dy, dz)]
        params = [p[name][img, slot].unsqueeze(1) for name in _PARAMS]
        t = fn(*rays, *params)
        if any_hit:
            hits.index_put_((img,), (t < _INF).float(), accumulate=True)
        else:
            t_all[img, slot] = t
    if any_hit:
        return hits > 0
    t, slot = t_all.min(dim=1)
    return t, slot


# --------------------------------------------------------------------------- rendering

def render_scenes(p: Dict[str, Tensor], size: int, g: torch.Generator) -> Dict[str, Tensor]:
    """Ray-cast the scenes in ``p`` at ``size``×``size`` → input, mask, depth, translation."""
    n, s = p["label"].numel(), size
    P = s * s
    f = s / (2 * math.tan(math.radians(30)))                  # 60° horizontal field of view
    pix = (torch.arange(s, dtype=torch.float32) + 0.5 - s / 2) / f
    xc = pix.view(1, s).expand(s, s).reshape(1, P)             # right
    yc = (-pix).view(s, 1).expand(s, s).reshape(1, P)          # up
    cp, sp = p["pitch"].cos().view(n, 1), p["pitch"].sin().view(n, 1)
    dx = xc.expand(n, P)
    dy = yc * cp - sp                                          # z-depth = t since d_cam.z = 1
    dz = yc * sp + cp
    ox, oy, oz = torch.zeros(n, 1), p["cam_h"].view(n, 1), torch.zeros(n, 1)
    inf = torch.full((n, P), _INF)

    # ---- background: floor, walls, sky
    t_floor = torch.where(dy < 0, -oy / dy.clamp(max=-1e-9), inf)
    indoor = p["indoor"].view(n, 1)
    t_back = torch.where(indoor, p["wall_d"].view(n, 1) / dz, inf)
    wall_w = p["wall_w"].view(n, 1)
    t_side = torch.where(dx < 0, -wall_w / dx.clamp(max=-1e-9), wall_w / dx.clamp(min=1e-9))
    t_side = torch.where(indoor & (dx.abs() > 1e-9), t_side, inf)
    t_wall = torch.minimum(t_back, t_side)
    is_floor = t_floor <= t_wall
    t_bg = torch.minimum(t_floor, t_wall)

    # ---- objects
    t_obj, slot = _cast_objects(p, ox, oy, oz, dx, dy, dz)
    is_obj = t_obj < t_bg
    t = torch.minimum(t_obj, t_bg)
    sky = ~torch.isfinite(t)
    t_safe = torch.where(sky, torch.zeros_like(t), t)
    px, py, pz = ox + t_safe * dx, oy + t_safe * dy, oz + t_safe * dz

    # semantic + instance ids
    obj_cat = p["cat"].gather(1, slot).clamp(min=0)
    mask = torch.where(is_floor, 1, 2)
    mask = torch.where(is_obj, 3 + obj_cat, mask)
    mask = torch.where(sky, 0, mask)
    side_id = torch.where(t_back <= t_side, 1, torch.where(dx < 0, 2, 3))
    inst = torch.where(is_floor, 0, side_id)
    inst = torch.where(is_obj, 4 + slot, inst)
    inst = torch.where(sky, -1, inst)

    # ---- normals
    gp = {name: p[name].gather(1, slot) for name in _PARAMS}
    onx, ony, onz = _object_normals(px, py, pz, obj_cat, gp["obj_x"], gp["obj_z"], gp["obj_r"],
                                    gp["obj_h"], gp["obj_hz"], gp["obj_yaw"])
    zero, one = torch.zeros_like(px), torch.ones_like(px)
    wnx = torch.where(side_id == 1, zero, torch.where(side_id == 2, one, -one))
    wnz = torch.where(side_id == 1, -one, zero)
    nx = torch.where(is_obj, onx, torch.where(is_floor, zero, wnx))
    ny = torch.where(is_obj, ony, torch.where(is_floor, one, zero))
    nz = torch.where(is_obj, onz, torch.where(is_floor, zero, wnz))

    # ---- albedo
    checker = ((px / p["tile"].view(n, 1)).floor() + (pz / p["tile"].view(n, 1)).floor()) % 2
    floor_rgb = torch.where(checker.bool().unsqueeze(1), p["floor_rgb"].view(n, 3, 1), p["floor_rgb2"].view(n, 3, 1))
    along = torch.where(side_id == 1, px, pz)
    stripes = 0.92 + 0.08 * torch.sin(along * 9.0).sign()
    wall_rgb = p["wall_rgb"].view(n, 3, 1) * stripes.unsqueeze(1)
    obj_rgb = p["obj_rgb"].gather(1, slot.unsqueeze(-1).expand(n, P, 3)).transpose(1, 2)
    albedo = torch.where(is_obj.unsqueeze(1), obj_rgb, torch.where(is_floor.unsqueeze(1), floor_rgb, wall_rgb))
    dlen = torch.sqrt(dx * dx + dy * dy + dz * dz)
    elev = (dy / dlen).clamp(min=0).sqrt().unsqueeze(1)      # 0 at the horizon, 1 straight up
    sky_rgb = p["sky_low"].view(n, 3, 1) + (p["sky_top"] - p["sky_low"]).view(n, 3, 1) * elev

    # ---- input: sun + shadows + specular + fog + noise
    L = p["light"]
    lx, ly, lz = (L[:, i].view(n, 1) for i in range(3))
    ndl = (nx * lx + ny * ly + nz * lz).clamp(min=0)
    lit = (~sky) & (ndl > 0)
    off = 2e-3
    sox, soy, soz = px + off * nx, py + off * ny, pz + off * nz
    shadow = _cast_objects(p, sox, soy, soz, lx, ly, lz, any_hit=True) & lit
    diffuse = ndl * (1 - 0.75 * shadow.float())
    amb = p["ambient"].view(n, 1)
    light_rgb = p["light_rgb"].view(n, 3, 1)
    shade = amb.unsqueeze(1) + (1 - amb).unsqueeze(1) * light_rgb * diffuse.unsqueeze(1)
    hx, hy, hz = lx - dx / dlen, ly - dy / dlen, lz - dz / dlen
    hn = torch.sqrt(hx * hx + hy * hy + hz * hz).clamp(min=1e-8)
    spec = ((nx * hx + ny * hy + nz * hz) / hn).clamp(min=0) ** 24 * 0.45 * (is_obj & ~shadow)
    colour = albedo * shade + spec.unsqueeze(1) * light_rgb
    fog = torch.exp(-t_safe / p["fog"].view(n, 1)).unsqueeze(1)
    horizon = p["sky_low"].view(n, 3, 1)
    colour = colour * fog + horizon * (1 - fog)
    colour = torch.where(sky.unsqueeze(1), sky_rgb, colour)
    colour = colour + p["noise"].view(n, 1, 1) * torch.randn(n, 3, P, generator=g)

    # ---- translation: fixed light, cel shading, colour remap, depth tint, dusk sky, outlines
    ndl2 = (nx * _L2[0] + ny * _L2[1] + nz * _L2[2]).clamp(0, 1)
    bands = (ndl2 * 3.999).floor() / 3
    luma = (albedo * torch.tensor([0.3, 0.59, 0.11]).view(1, 3, 1)).sum(1, keepdim=True)
    style = 0.6 * albedo.roll(1, dims=1) + 0.4 * luma
    trans = style * (0.3 + 0.7 * bands).unsqueeze(1) * _LIGHT2
    far = (t_safe / 15.0).clamp(0, 1).unsqueeze(1) * 0.45
    trans = trans * (1 - far) + _HAZE2 * far
    sky2 = _SKY2_LOW + (_SKY2_HIGH - _SKY2_LOW) * elev
    trans = torch.where(sky.unsqueeze(1), sky2, trans)
    inst2 = inst.view(n, s, s)
    edge = torch.zeros(n, s, s, dtype=torch.bool)
    edge[:, :, :-1] |= inst2[:, :, :-1] != inst2[:, :, 1:]
    edge[:, :-1, :] |= inst2[:, :-1, :] != inst2[:, 1:, :]
    trans = torch.where(edge.view(n, 1, P), trans * 0.15, trans)

    depth = torch.where(sky | (t_safe > MAX_DEPTH), torch.zeros_like(t_safe), t_safe)
    to_u8 = lambda x: (x.clamp(0, 1) * 255).round().to(torch.uint8).view(n, 3, s, s)  # noqa: E731
    return {
        "input": to_u8(colour),
        "mask": mask.to(torch.uint8).view(n, s, s),
        "depth": depth.view(n, 1, s, s),
        "translation": to_u8(trans),
    }


def generate_scenes(n: int, num_classes: int, size: int, seed_key: int, chunk: Optional[int] = None) -> Dict[str, Tensor]:
    """Sample and render ``n`` scenes. ``chunk``: scenes per vectorised batch (default: ~128k rays,
    which keeps the working set in cache; measured fastest on a 2-core CPU). The random stream is
    consumed chunk by chunk, so the default chunk is a fixed function of ``size``: changing it
    changes the drawn scenes."""
    chunk = chunk or max(1, (1 << 17) // (size * size))
    g = torch.Generator().manual_seed(seed_key)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    parts = []
    with single_thread():
        for i in range(0, n, chunk):
            p = sample_scenes(labels[i:i + chunk], num_classes, g)
            parts.append(render_scenes(p, size, g))
    out = {k: torch.cat([q[k] for q in parts]) for k in parts[0]} if parts else {}
    out["label"] = labels
    return out


@lru_cache(maxsize=32)
def _stats(num_classes: int, size: int, seed: int) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    x = generate_scenes(128, num_classes, size, stream_seed("scenes", "stats", seed))["input"].float() / 255
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in std)


DEFAULTS = dict(image_size=64, train_size=2000, test_size=500, num_classes=4, seed=0)
MAX_SCENE_CLASSES = 16


class ScenesDataset(InMemoryDataset):
    """See the module docstring. Fields: input, label, mask, depth, translation."""

    def __init__(self, split: str = "train", root: Optional[str] = None, **options):
        o = resolve_options("scenes", options, DEFAULTS)
        check_split("scenes", split)
        size = positive_int(o["image_size"], "scenes", "image_size", 8)
        k = positive_int(o["num_classes"], "scenes", "num_classes", 2)
        if k > MAX_SCENE_CLASSES:
            raise ConfigError(
                f"dataset 'scenes': num_classes={k} is too many; it has at most {MAX_SCENE_CLASSES} "
                "(4 majority categories x indoor/outdoor x few/many objects)"
            )
        n = positive_int(o[f"{split}_size"], "scenes", f"{split}_size", 1)
        seed = o["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"dataset 'scenes': option seed={seed!r} must be an int")
        data = generate_scenes(n, k, size, stream_seed("scenes", split, seed))
        mean, std = _stats(k, size, seed)
        info = DatasetInfo(
            num_classes=k, in_channels=3, image_size=(size, size),
            fields=("input", "label", "mask", "depth", "translation"),
            mean=mean, std=std, num_seg_classes=NUM_SEG_CLASSES,
        )
        super().__init__(info, data)
        self.split = split
        self.seg_class_names = SEG_CLASSES


register_dataset("scenes")(ScenesDataset)
