"""Vectorised ray caster behind SynthScenes: scene sampling, rendering and exact ground truth.

Every pixel is rendered at once with NumPy (no per-pixel Python loop).  Frames:

* **world**: ``x`` right, ``y`` up, ``z`` forward into the room; the floor is ``y = 0``.
* **camera** (OpenCV convention): ``x`` right, ``y`` down, ``z`` forward (the optical axis).
  A pixel at column ``u``, row ``v`` (integer coordinates at pixel centres) looks along
  ``r = ((u − cx) / f, (v − cy) / f, 1)`` with ``cx = cy = (S − 1) / 2`` and
  ``f = (S / 2) / tan(FOV / 2)`` for an ``S × S`` image; the point hit at parameter ``t`` along
  ``r`` has camera-frame z-depth exactly ``t``.

The room is an axis-aligned box open behind the camera: floor (``y = 0``), ceiling
(``y = room_height``), back wall (``z = room_depth``), left and right walls
(``x = −left``, ``x = right``).  Every camera ray hits one of them, so depth is positive
everywhere.  Objects stand on the floor and never touch each other: spheres, boxes (rotated
about the vertical axis by ``yaw``; ``yaw = 0`` is axis-aligned) and closed vertical cylinders.
"""

from __future__ import annotations

import colorsys
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from metasparsity.data.tasks import SYNTH_CLASSES

GENERATOR_VERSION = 1
"""Bumped whenever the same ``(seed, index)`` would render differently (invalidates caches)."""

FOV_DEGREES = 60.0
"""Horizontal (= vertical, square images) field of view of the pinhole camera."""

EDGE_DEPTH_JUMP = 0.02
"""Relative depth jump ``|z_p − z_q| / min(z_p, z_q)`` between two different surfaces that marks
an occlusion edge."""

EDGE_NORMAL_ANGLE = 60.0
"""Angle (degrees) between neighbouring normals that marks a crease edge."""

OBJECT_KINDS = ("sphere", "box", "cylinder")
MAX_OBJECTS = 5

# Room surfaces (``surface`` map ids 0..4); object ``k`` has surface id ``ROOM_SURFACES + k``.
FLOOR, CEILING, BACK, LEFT, RIGHT = range(5)
ROOM_SURFACES = 5
_ROOM_CLASS = [SYNTH_CLASSES.index(c) for c in ("floor", "ceiling", "wall", "wall", "wall")]
_ROOM_NORMAL = np.array(
    [[0, 1, 0], [0, -1, 0], [0, 0, -1], [1, 0, 0], [-1, 0, 0]], dtype=np.float32)
# Which world axes span each room plane (the third one is constant on it).
_ROOM_UV = [(0, 2), (0, 2), (0, 1), (2, 1), (2, 1)]
CLASS_OF_KIND = {k: SYNTH_CLASSES.index(k) for k in OBJECT_KINDS}

_EPS = 1e-4
F32 = np.float32


# ----------------------------------------------------------------------------- scene description

@dataclass
class Texture:
    """Solid albedo texture: ``plain``, ``stripes``, ``checker`` or ``noise`` between two colours.

    Evaluated on surface coordinates ``p`` (scene units): stripes alternate every ``scale`` along
    ``axis``; the checker alternates over the cells of a ``scale`` grid; noise mixes the colours
    by ``½ + ½·mean_i sin(k_i·p + φ_i)``.
    """

    kind: str
    color_a: np.ndarray  # (3,) linear RGB in [0, 1]
    color_b: np.ndarray
    scale: float = 0.5
    axis: np.ndarray = field(default_factory=lambda: np.array([1, 0, 0], F32))
    waves: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), F32))
    phases: np.ndarray = field(default_factory=lambda: np.zeros(3, F32))

    def albedo(self, p: np.ndarray) -> np.ndarray:
        """Albedo ``[3, M]`` at points ``p`` ``[3, M]``."""
        if self.kind == "plain":
            return np.broadcast_to(self.color_a[:, None], p.shape)
        if self.kind == "stripes":
            w = np.floor(_dot(self.axis, p) / self.scale) % 2
        elif self.kind == "checker":
            w = np.floor(p / self.scale).sum(0) % 2
        else:
            w = 0.5 + 0.5 * np.sin(self.waves @ p + self.phases[:, None]).mean(0)
        return self.color_a[:, None] * (1 - w) + self.color_b[:, None] * w


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the leading axis of length 3 (components-first layout ``[3, ...]``)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


@dataclass
class SceneObject:
    """One object on the floor.

    ``center``: sphere centre; for boxes and cylinders the centre of the footprint at ``y = 0``.
    ``size``: sphere ``(r,)``; box half extents ``(ex, ey, ez)`` (height ``2·ey``); cylinder
    ``(r, h)``.  ``yaw`` rotates a box about the vertical axis (radians).
    """

    kind: str
    center: np.ndarray
    size: np.ndarray
    yaw: float
    texture: Texture

    @property
    def footprint(self) -> float:
        """Radius of a vertical circle that contains the object's footprint."""
        if self.kind == "box":
            return float(math.hypot(self.size[0], self.size[2]))
        return float(self.size[0])


@dataclass
class Scene:
    """A sampled scene: room, camera, light and objects (world frame, scene units)."""

    left: float
    right: float
    room_height: float
    room_depth: float
    cam_pos: np.ndarray  # (3,)
    cam_rot: np.ndarray  # (3, 3): world = cam_rot @ camera
    light_pos: np.ndarray  # (3,)
    light_color: np.ndarray  # (3,)
    ambient: float
    room_textures: list[Texture]  # floor, ceiling, back, left, right
    objects: list[SceneObject]

    @property
    def light_cam(self) -> np.ndarray:
        """The light's position in the camera frame."""
        return (self.light_pos - self.cam_pos) @ self.cam_rot


def _hsv(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*s), rng.uniform(*v))
    return np.asarray(rgb, dtype=F32)


def _texture(rng: np.random.Generator, kinds: tuple[str, ...], sat: tuple[float, float],
             val: tuple[float, float], scale: tuple[float, float]) -> Texture:
    kind = kinds[rng.integers(len(kinds))]
    a = _hsv(rng, sat, val)
    b = a * F32(rng.uniform(0.35, 0.7)) if rng.uniform() < 0.6 else _hsv(rng, sat, val)
    axis = rng.normal(size=3).astype(F32)
    axis /= np.linalg.norm(axis) + 1e-12
    waves = (rng.normal(size=(3, 3)) * (2 * math.pi / rng.uniform(*scale))).astype(F32)
    return Texture(kind, a, b.astype(F32), float(rng.uniform(*scale)), axis, waves,
                   rng.uniform(0, 2 * math.pi, size=3).astype(F32))


def _rot_x(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene from ``rng`` (the only source of randomness).

    Room: half widths ``left, right ∈ [2.5, 3.5]``, height ``[2.6, 3.2]``, depth ``[6, 8]``.
    Camera at ``x ∈ [−0.4, 0.4]``, height ``[1.3, 1.8]``, ``z ∈ [0, 0.4]``, looking down
    ``12° ± 5°`` with yaw ``± 8°`` and roll ``± 3°``.  1–5 objects (kind uniform) on the floor at
    ``z = 2 + (depth − 2.6)·u^1.5`` (``u`` uniform: denser near the camera), inside 85 % of the
    horizontal field of view, rejected when their footprints would come closer than 0.05 (an
    object that finds no place in 40 tries is dropped).
    One point light under the ceiling, at least 0.4 to the left or right of the camera's y–z
    plane so that ``light_left`` is never ambiguous.
    """
    left, right = rng.uniform(2.5, 3.5, size=2)
    height = rng.uniform(2.6, 3.2)
    depth = rng.uniform(6.0, 8.0)
    cam_pos = np.array([rng.uniform(-0.4, 0.4), rng.uniform(1.3, 1.8), rng.uniform(0.0, 0.4)])
    yaw = math.radians(rng.uniform(-8, 8))
    pitch_down = math.radians(12 + rng.uniform(-5, 5))
    roll = math.radians(rng.uniform(-3, 3))
    # camera axes in the world: x right, y down, z forward; then yaw (world y), pitch, roll.
    base = np.diag([1.0, -1.0, 1.0])
    cam_rot = _rot_y(yaw) @ base @ _rot_x(-pitch_down) @ _rot_z(roll)

    room_textures = [
        _texture(rng, ("checker", "stripes", "noise", "plain"), (0.1, 0.5), (0.45, 0.85), (0.3, 0.9)),
        _texture(rng, ("plain", "noise"), (0.0, 0.15), (0.75, 0.95), (0.8, 2.0)),
    ]
    wall = _texture(rng, ("plain", "stripes", "noise"), (0.05, 0.4), (0.55, 0.9), (0.25, 0.8))
    if wall.kind == "stripes":  # wallpaper stripes run vertically
        wall.axis = np.array([1, 0, 1], F32) / F32(math.sqrt(2))
    room_textures += [wall, wall, wall]

    objects: list[SceneObject] = []
    tan_half = math.tan(math.radians(FOV_DEGREES) / 2) * 0.85
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        kind = OBJECT_KINDS[rng.integers(len(OBJECT_KINDS))]
        if kind == "sphere":
            size = np.array([rng.uniform(0.25, 0.65)])
            yaw_o = 0.0
        elif kind == "box":
            size = np.array([rng.uniform(0.2, 0.55), rng.uniform(0.2, 0.7), rng.uniform(0.2, 0.55)])
            yaw_o = 0.0 if rng.uniform() < 0.3 else rng.uniform(0, math.pi / 2)
        else:
            size = np.array([rng.uniform(0.15, 0.45), rng.uniform(0.4, 1.6)])
            yaw_o = 0.0
        tex = _texture(rng, ("plain", "stripes", "checker", "noise"), (0.5, 1.0), (0.55, 1.0),
                       (0.08, 0.35))
        obj = SceneObject(kind, np.zeros(3, F32), size.astype(F32), float(yaw_o), tex)
        rad = obj.footprint
        for _try in range(40):
            z = 2.0 + (depth - 2.6) * rng.uniform() ** 1.5  # denser near the camera
            half = (z - cam_pos[2]) * tan_half
            x = cam_pos[0] + rng.uniform(-half, half)
            if x - rad < -left + 0.05 or x + rad > right - 0.05 or z + rad > depth - 0.05:
                continue
            if all(math.hypot(x - o.center[0], z - o.center[2]) >= rad + o.footprint + 0.05
                   for o in objects):
                y = size[0] if kind == "sphere" else 0.0
                obj.center = np.array([x, y, z], F32)
                objects.append(obj)
                break

    for _try in range(50):
        light = np.array([rng.uniform(-left + 0.4, right - 0.4), height - rng.uniform(0.15, 0.6),
                          rng.uniform(0.5, depth - 1.0)])
        if abs(((light - cam_pos) @ cam_rot)[0]) >= 0.4:
            break
    else:  # pragma: no cover - 50 misses in a row has probability < 1e-30
        light[0] = cam_pos[0] + (1.0 if light[0] >= cam_pos[0] else -1.0)
    tint = rng.uniform(0.85, 1.0, size=3)
    return Scene(float(left), float(right), float(height), float(depth), cam_pos.astype(F32),
                 cam_rot.astype(F32), light.astype(F32),
                 (tint / tint.max() * rng.uniform(1.0, 1.4)).astype(F32),
                 float(rng.uniform(0.12, 0.25)), room_textures, objects)


# ----------------------------------------------------------------------------- camera

def intrinsics(size: int) -> np.ndarray:
    """Pinhole matrix ``K`` (float64 ``[3, 3]``) of an ``size × size`` image, pixel centres at
    integer coordinates: ``[[f, 0, c], [0, f, c], [0, 0, 1]]`` with ``c = (size − 1) / 2``."""
    f = (size / 2) / math.tan(math.radians(FOV_DEGREES) / 2)
    c = (size - 1) / 2
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


@functools.lru_cache(maxsize=8)
def camera_rays(size: int) -> np.ndarray:
    """Camera-frame ray directions ``[3, size·size]`` (row-major pixels), each with ``z = 1``."""
    K = intrinsics(size)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)])
    d = d.reshape(3, -1).astype(F32)
    d.setflags(write=False)
    return d


# ----------------------------------------------------------------------------- intersections
# Vectors are stored components first: ``o`` is ``[3]`` or ``[3, M]``, ``d`` is ``[3, M]`` (not
# normalised).  Each function returns the ray-parameter interval ``[tn, tf]`` inside the (convex)
# solid, with ``tn > tf`` (or NaN) for a miss, and a tag saying which face ``tn`` lies on.

def _col(v: np.ndarray) -> np.ndarray:
    return v[:, None] if v.ndim == 1 else v


def _sphere(o: np.ndarray, d: np.ndarray, obj: SceneObject):
    oc = _col(o) - obj.center[:, None]
    r = obj.size[0]
    a = _dot(d, d)
    b = _dot(oc, d)
    c = _dot(oc, oc) - r * r
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0))
    miss = disc < 0
    tn = np.where(miss, np.inf, (-b - sq) / a)
    tf = np.where(miss, -np.inf, (-b + sq) / a)
    return tn, tf, None


def _to_local(obj: SceneObject, v: np.ndarray) -> np.ndarray:
    """World vector(s) ``[3, ...]`` into the object's frame (rotation about ``y`` by ``-yaw``)."""
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    return np.stack([c * v[0] - s * v[2], v[1], s * v[0] + c * v[2]])


def _box(o: np.ndarray, d: np.ndarray, obj: SceneObject):
    ext = obj.size
    ol = _to_local(obj, _col(o) - (obj.center + np.array([0, ext[1], 0], F32))[:, None])
    dl = _to_local(obj, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dl
        t1 = (-ext[:, None] - ol) * inv  # ol: origin in the frame centred on the box
        t2 = (ext[:, None] - ol) * inv
    lo = np.minimum(t1, t2)
    hi = np.maximum(t1, t2)
    tn = np.maximum(np.maximum(lo[0], lo[1]), lo[2])
    tf = np.minimum(np.minimum(hi[0], hi[1]), hi[2])
    return tn, tf, (lo, dl)


def _cylinder(o: np.ndarray, d: np.ndarray, obj: SceneObject):
    r, h = obj.size
    oc = _col(o) - obj.center[:, None]
    dx, dy, dz = d
    a = np.maximum(dx * dx + dz * dz, F32(1e-12))
    b = oc[0] * dx + oc[2] * dz
    c = oc[0] * oc[0] + oc[2] * oc[2] - r * r
    disc = b * b - a * c
    sq = np.sqrt(np.maximum(disc, 0))
    miss = disc < 0
    t0 = np.where(miss, np.inf, (-b - sq) / a)
    t1 = np.where(miss, -np.inf, (-b + sq) / a)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dy
        s0 = -oc[1] * inv
        s1 = (h - oc[1]) * inv
    slo = np.minimum(s0, s1)
    tn = np.maximum(t0, slo)
    tf = np.minimum(t1, np.maximum(s0, s1))
    return tn, tf, t0 >= slo


_INTERSECT = {"sphere": _sphere, "box": _box, "cylinder": _cylinder}


def _object_normal(obj: SceneObject, p: np.ndarray, d: np.ndarray, tag, idx: np.ndarray
                   ) -> np.ndarray:
    """Outward unit normals ``[3, M]`` at hit points ``p`` ``[3, M]`` of rays ``d``; ``tag`` is the
    intersection's face tag for all rays, ``idx`` the rays that hit this object."""
    if obj.kind == "sphere":
        return (p - obj.center[:, None]) / obj.size[0]
    if obj.kind == "box":
        lo, dl = tag
        lo, dl = lo[:, idx], dl[:, idx]
        axis = lo.argmax(0)
        cols = np.arange(p.shape[1])
        n_local = np.zeros_like(p)
        n_local[axis, cols] = -np.sign(dl[axis, cols])
        c, s = math.cos(obj.yaw), math.sin(obj.yaw)
        return np.stack([c * n_local[0] + s * n_local[2], n_local[1],
                         -s * n_local[0] + c * n_local[2]])
    side = tag[idx]
    q = p - obj.center[:, None]
    zero = np.zeros(p.shape[1], F32)
    return np.stack([np.where(side, q[0] / obj.size[0], zero),
                     np.where(side, zero, -np.sign(d[1])),
                     np.where(side, q[2] / obj.size[0], zero)])


def _texture_coords(obj: SceneObject, p: np.ndarray, n_world: np.ndarray) -> np.ndarray:
    """Object-local coordinates ``[3, M]``; on flat faces the coordinate along the normal is set to
    0 so that rounding on the face plane cannot flip a stripe or checker cell."""
    q = _to_local(obj, p - obj.center[:, None])
    if obj.kind != "sphere":
        q = np.where(np.abs(_to_local(obj, n_world)) > 0.999, 0, q)
    return q


# ----------------------------------------------------------------------------- rendering

def render(scene: Scene, size: int, shadows: bool = True) -> dict[str, np.ndarray]:
    """Render ``scene`` at ``size × size``.

    Returns numpy arrays: ``image`` float32 ``[3, S, S]`` RGB in [0, 1] (gamma 2.2 encoded);
    ``segment`` int64 ``[S, S]`` (index in ``SYNTH_CLASSES``); ``depth`` float32 ``[1, S, S]``
    (camera z, > 0); ``normal`` float32 ``[3, S, S]`` (unit, camera frame, facing the camera);
    ``edge`` float32 ``[1, S, S]`` in {0, 1} (see :func:`edge_map`); ``object_id`` int64
    ``[S, S]`` (index into ``scene.objects``, −1 for the room); ``surface`` int64 ``[S, S]``
    (room planes 0..4 = floor, ceiling, back, left, right; object ``k`` is ``5 + k``).
    """
    d = scene.cam_rot @ camera_rays(size)  # world directions [3, N], camera z-component 1
    o = scene.cam_pos
    n_pix = d.shape[1]

    # The room seen from inside: the exit distance is the nearest of the three axis planes.
    with np.errstate(divide="ignore", invalid="ignore"):
        ty = np.where(d[1] < 0, -o[1] / d[1], (scene.room_height - o[1]) / d[1])
        tx = np.where(d[0] < 0, (-scene.left - o[0]) / d[0], (scene.right - o[0]) / d[0])
        tz = (scene.room_depth - o[2]) / d[2]
    t = np.minimum(np.minimum(ty, tx), tz)
    surface = np.where(t == ty, np.where(d[1] < 0, FLOOR, CEILING),
                       np.where(t == tx, np.where(d[0] < 0, LEFT, RIGHT), BACK))

    tags = []
    for k, obj in enumerate(scene.objects):
        tn, tf, tag = _INTERSECT[obj.kind](o, d, obj)
        tags.append(tag)
        hit = (tn <= tf) & (tn > _EPS) & (tn < t)
        t = np.where(hit, tn, t)
        surface[hit] = ROOM_SURFACES + k

    p = o[:, None] + t * d
    normal = np.empty((3, n_pix), F32)
    albedo = np.empty((3, n_pix), F32)
    for s in range(ROOM_SURFACES + len(scene.objects)):
        idx = np.flatnonzero(surface == s)
        if idx.size == 0:
            continue
        ps = p[:, idx]
        if s < ROOM_SURFACES:
            normal[:, idx] = _ROOM_NORMAL[s][:, None]
            uv = np.zeros_like(ps)
            cols = list(_ROOM_UV[s])
            uv[cols] = ps[cols]
            albedo[:, idx] = scene.room_textures[s].albedo(uv)
        else:
            k = s - ROOM_SURFACES
            obj = scene.objects[k]
            n = _object_normal(obj, ps, d[:, idx], tags[k], idx)
            n /= np.sqrt(_dot(n, n))
            normal[:, idx] = n
            albedo[:, idx] = obj.texture.albedo(_texture_coords(obj, ps, n))
    # Convex objects seen from outside always show front faces; this only guards rounding.
    normal = np.where(_dot(normal, d) > 0, -normal, normal)

    to_light = scene.light_pos[:, None] - p
    dist = np.sqrt(_dot(to_light, to_light))
    ndl = np.maximum(_dot(normal, to_light) / dist, 0)
    if shadows and scene.objects:
        lit = np.flatnonzero(ndl > 0)
        origin = p[:, lit] + F32(1e-3) * normal[:, lit]
        seg = scene.light_pos[:, None] - origin
        blocked = np.zeros(lit.size, bool)
        for obj in scene.objects:
            tn, tf, _ = _INTERSECT[obj.kind](origin, seg, obj)
            blocked |= (tn <= tf) & (tf > _EPS) & (tn < 1 - _EPS)
        ndl[lit[blocked]] = 0
    falloff = 10.0 / (10.0 + dist * dist)
    light = scene.ambient + scene.light_color[:, None] * (ndl * falloff)
    rgb = np.clip(albedo * light, 0, 1) ** F32(1 / 2.2)

    obj_class = np.array([CLASS_OF_KIND[ob.kind] for ob in scene.objects], np.int64)
    segment = np.concatenate([np.asarray(_ROOM_CLASS, np.int64), obj_class])[surface]
    normal_cam = scene.cam_rot.T @ normal
    normal_cam /= np.sqrt(_dot(normal_cam, normal_cam))
    S = size
    out = {
        "image": rgb.reshape(3, S, S).astype(F32),
        "segment": segment.reshape(S, S),
        "depth": t.reshape(1, S, S).astype(F32),
        "normal": normal_cam.reshape(3, S, S).astype(F32),
        "object_id": np.where(surface >= ROOM_SURFACES, surface - ROOM_SURFACES, -1)
        .reshape(S, S).astype(np.int64),
        "surface": surface.reshape(S, S).astype(np.int64),
    }
    out["edge"] = edge_map(out["segment"], out["surface"], out["depth"][0], out["normal"])[None]
    return out


def edge_map(segment: np.ndarray, surface: np.ndarray, depth: np.ndarray, normal: np.ndarray,
             depth_jump: float = EDGE_DEPTH_JUMP, normal_angle: float = EDGE_NORMAL_ANGLE
             ) -> np.ndarray:
    """1-px edges (float32 ``[H, W]`` in {0, 1}) from ``segment``/``surface`` ``[H, W]``, ``depth``
    ``[H, W]`` and unit ``normal`` ``[3, H, W]``.

    Two 4-neighbours ``p, q`` are separated by an edge when
    (a) their classes differ, or
    (b) they lie on different surfaces and ``|z_p − z_q| > depth_jump · min(z_p, z_q)``
        (an occlusion; within one smooth surface the depth of neighbouring pixels may differ a lot
        at grazing angles without any discontinuity, so that is not an edge), or
    (c) their normals differ by more than ``normal_angle`` degrees (a crease).
    The edge is marked on the pixel nearer to the camera (the occluding side), on ``p`` (the
    upper / left one) when both depths are equal.
    """
    edge = np.zeros(segment.shape, bool)
    cos_t = math.cos(math.radians(normal_angle))
    for p, q in (((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                 ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))):
        zp, zq = depth[p], depth[q]
        pair = segment[p] != segment[q]
        pair |= (surface[p] != surface[q]) & (np.abs(zp - zq) > depth_jump * np.minimum(zp, zq))
        pair |= _dot(normal[(slice(None), *p)], normal[(slice(None), *q)]) < cos_t
        near_p = zp <= zq
        edge[p] |= pair & near_p
        edge[q] |= pair & ~near_p
    return edge.astype(F32)


def attributes(segment: np.ndarray, object_id: np.ndarray, light_cam: np.ndarray
               ) -> dict[str, np.ndarray]:
    """Image-level attributes (float32 scalars in {0, 1}) from what is rendered:

    ``has_sphere``: at least one pixel of class ``sphere``;
    ``many_objects``: at least 3 distinct objects with a visible pixel;
    ``light_left``: the light's camera-frame ``x`` is negative (left of the optical axis).
    """
    visible = np.unique(object_id[object_id >= 0]).size
    return {
        "has_sphere": np.asarray((segment == SYNTH_CLASSES.index("sphere")).any(), np.float32),
        "many_objects": np.asarray(visible >= 3, np.float32),
        "light_left": np.asarray(light_cam[0] < 0, np.float32),
    }


def render_sample(seed: int, index: int, size: int, shadows: bool = True) -> dict[str, np.ndarray]:
    """The sample ``index`` of the stream ``seed`` at ``size × size``: :func:`render`'s arrays plus
    the attributes, ``intrinsics`` ``[3, 3]``, ``light_cam`` ``[3]`` and ``object_class``
    ``[n_objects]``.  Depends only on ``(seed, index, size)``."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng)
    out = render(scene, size, shadows=shadows)
    light_cam = scene.light_cam.astype(np.float32)
    out.update(attributes(out["segment"], out["object_id"], light_cam))
    out["intrinsics"] = intrinsics(size)
    out["light_cam"] = light_cam
    out["object_class"] = np.array([CLASS_OF_KIND[o.kind] for o in scene.objects], np.int64)
    return out
