"""Tiny fixtures written in the exact on-disk layouts of the real data sets.

Each writer returns what it wrote (ids and the raw arrays) so that tests can compare what a loader
serves with what the files hold.  Usable from any test::

    from tests.data.fixtures import write_nyud_mt, write_mtan, write_celebamaskhq_raw
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
]
CELEBA_PARTS = ["skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]


def _blocks(rng: np.random.Generator, h: int, w: int, lo: int, hi: int, block: int = 4) -> np.ndarray:
    """Piecewise-constant integer map in [lo, hi] made of ``block``×``block`` squares."""
    small = rng.integers(lo, hi + 1, size=(-(-h // block), -(-w // block)))
    return np.kron(small, np.ones((block, block), dtype=np.int64))[:h, :w]


def _normals(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``[H, W, 3]`` normals: mostly unit, some scaled by 2 (not unit), some all-zero (invalid)."""
    n = rng.normal(size=(h, w, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    n[0, :3] *= 2.0
    n[1, :5] = 0.0
    return n


def write_nyud_mt(root: str | Path, n_train: int = 6, n_val: int = 4,
                  size: tuple[int, int] = (24, 32), seed: int = 0) -> dict[str, Any]:
    """Write the NYUD_MT layout: images/*.jpg, segmentation/*.png (0 = void, 1..40),
    depth/*.npy (metres, with zeros and a NaN), normals/*.npy ([H, W, 3], with zero and non-unit
    vectors), edge/*.npy, gt_sets/{train,val}.txt.

    Returns ``root``, ``train_ids``, ``val_ids`` (official split) and per-id raw arrays
    ``image`` (uint8 written), ``segmentation``, ``depth``, ``normals``, ``edge``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    ids = [f"{5 * k + 1:06d}" for k in range(n_train + n_val)]
    order = rng.permutation(len(ids))
    train_ids = sorted(ids[i] for i in order[:n_train])
    val_ids = sorted(ids[i] for i in order[n_train:])
    for sub in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"root": root, "train_ids": train_ids, "val_ids": val_ids, "size": size,
                           "image": {}, "segmentation": {}, "depth": {}, "normals": {}, "edge": {}}
    for id_ in ids:
        seg = _blocks(rng, h, w, 0, 40).astype(np.uint8)
        seg[0, 0], seg[-1, -1], seg[h // 2, w // 2] = 0, 40, 1
        img = np.stack([seg * 6, np.tile(np.arange(w) * 7 % 256, (h, 1)),
                        np.tile((np.arange(h) * 9 % 256)[:, None], (1, w))], -1).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"{id_}.jpg", quality=95)
        with Image.open(root / "images" / f"{id_}.jpg") as im:
            out["image"][id_] = np.asarray(im.convert("RGB")).copy()
        Image.fromarray(seg).save(root / "segmentation" / f"{id_}.png")
        depth = rng.uniform(0.5, 10.0, size=(h, w)).astype(np.float32)
        depth[2, :4] = 0.0
        depth[3, 3] = np.nan
        np.save(root / "depth" / f"{id_}.npy", depth)
        normals = _normals(rng, h, w)
        np.save(root / "normals" / f"{id_}.npy", normals)
        edge = (rng.random((h, w)) < 0.2).astype(np.float32)
        edge[4, :3] = 0.5
        np.save(root / "edge" / f"{id_}.npy", edge)
        out["segmentation"][id_], out["depth"][id_] = seg, depth
        out["normals"][id_], out["edge"][id_] = normals, edge
    (root / "gt_sets" / "train.txt").write_text("\n".join(train_ids) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(val_ids) + "\n")
    return out


def write_mtan(root: str | Path, n_train: int = 6, n_val: int = 4,
               size: tuple[int, int] = (24, 32), seed: int = 0) -> dict[str, Any]:
    """Write the MTAN layout: {train,val}/{image,label,depth,normal}/<i>.npy, channel-last as the
    real files are (image [H, W, 3] in [0, 1], label [H, W] float with -1 = ignore, 13 classes,
    depth [H, W, 1] with zeros, normal [H, W, 3] with zero vectors).

    Returns ``root`` and, per sub-folder ``train`` / ``val``, a list (index = file number) of
    dicts with the raw ``image``, ``label``, ``depth``, ``normal`` arrays.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    out: dict[str, Any] = {"root": root, "size": size, "train": [], "val": []}
    for sub, n in (("train", n_train), ("val", n_val)):
        for kind in ("image", "label", "depth", "normal"):
            (root / sub / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            label = _blocks(rng, h, w, -1, 12).astype(np.float32)
            label[0, 0], label[-1, -1] = -1.0, 12.0
            image = rng.random((h, w, 3)).astype(np.float32)
            depth = rng.uniform(0.5, 8.0, size=(h, w, 1)).astype(np.float32)
            depth[1, :6] = 0.0
            normal = _normals(rng, h, w)
            rec = {"image": image, "label": label, "depth": depth, "normal": normal}
            for kind, arr in rec.items():
                np.save(root / sub / kind / f"{i}.npy", arr)
            out[sub].append(rec)
    return out


def _face_masks(i: int, s: int) -> dict[str, np.ndarray]:
    """Rectangular part masks on an ``s``×``s`` grid with known overlaps (shifted per image).

    skin ∩ hair (hair wins), hair ∩ hat (hat wins), neck ∩ cloth (cloth wins); eyes, brows, nose
    and mouth inside the skin.  Image 1 has no hat, image 2 no eyes and no earring.
    """
    d = i % 3
    boxes = {
        "skin": (s // 8, s // 8 * 7, s // 4, s // 4 * 3),
        "hair": (0, s // 4 + d, s // 8, s // 8 * 7),
        "hat": (0, s // 8, s // 4, s // 4 * 3),
        "l_eye": (s // 8 * 3, s // 2, s // 8 * 3, s // 2 - 1),
        "r_eye": (s // 8 * 3, s // 2, s // 2 + 1, s // 8 * 5),
        "l_brow": (s // 4 + d + 1, s // 8 * 3, s // 8 * 3, s // 2 - 1),
        "r_brow": (s // 4 + d + 1, s // 8 * 3, s // 2 + 1, s // 8 * 5),
        "nose": (s // 2, s // 8 * 5, s // 2 - 2, s // 2 + 2),
        "mouth": (s // 4 * 3 - 2, s // 4 * 3, s // 2 - 4, s // 2 + 4),
        "u_lip": (s // 4 * 3 - 4, s // 4 * 3 - 2, s // 2 - 4, s // 2 + 4),
        "l_lip": (s // 4 * 3, s // 4 * 3 + 2, s // 2 - 4, s // 2 + 4),
        "l_ear": (s // 8 * 3, s // 8 * 5, s // 4 - 3, s // 4),
        "r_ear": (s // 8 * 3, s // 8 * 5, s // 4 * 3, s // 4 * 3 + 3),
        "ear_r": (s // 8 * 5, s // 8 * 5 + 2, s // 4 * 3, s // 4 * 3 + 2),
        "neck": (s // 8 * 7 - 2, s, s // 8 * 3, s // 8 * 5),
        "neck_l": (s // 8 * 7, s // 8 * 7 + 2, s // 8 * 3, s // 8 * 5),
        "cloth": (s - s // 16, s, 0, s),
    }
    if i == 1:
        del boxes["hat"]
    if i == 2:
        for k in ("l_eye", "r_eye", "ear_r"):
            del boxes[k]
    masks = {}
    for part, (r0, r1, c0, c1) in boxes.items():
        m = np.zeros((s, s), dtype=bool)
        m[r0:r1, c0:c1] = True
        masks[part] = m
    return masks


# One well-separated colour per 19-class label, so that images encode their label map.
PALETTE = np.array([[(37 * k) % 256, (91 * k + 40) % 256, (151 * k + 80) % 256]
                    for k in range(19)], dtype=np.uint8)


def write_celebamaskhq_raw(root: str | Path, ids: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 2000, 2001),
                           mask_size: int = 64, image_size: int = 128, with_mapping: bool = False,
                           seed: int = 0) -> dict[str, Any]:
    """Write the raw CelebAMask-HQ release for ``ids``: CelebA-HQ-img/<i>.jpg (``image_size``²,
    coloured by the expected label map), CelebAMask-HQ-mask-anno/<i // 2000>/<i:05d>_<part>.png
    (``mask_size``² binary masks, 0/255; the ``hat`` masks saved as RGB), the attribute file
    (plus a row for an id without image) and, with ``with_mapping``, the CelebA mapping file.

    Returns ``root``, ``ids`` (as strings), ``attributes`` (names), ``attr_values``
    ({id: int array in {-1, 1}}), ``masks`` ({id: {part: bool}}), ``expected19`` ({id: uint8
    label map at ``mask_size``, painted in the official order}) and ``partition`` (with_mapping:
    {id: train/val/test}).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"root": root, "ids": [str(i) for i in ids],
                           "attributes": list(CELEBA_ATTRIBUTES), "attr_values": {}, "masks": {},
                           "expected19": {}, "partition": {}}
    for i in ids:
        masks = _face_masks(i, mask_size)
        folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for part, m in masks.items():
            arr = (m * 255).astype(np.uint8)
            img = Image.fromarray(np.stack([arr] * 3, -1) if part == "hat" else arr)
            img.save(folder / f"{i:05d}_{part}.png")
        expected = np.zeros((mask_size, mask_size), dtype=np.uint8)
        for k, part in enumerate(CELEBA_PARTS, start=1):
            if part in masks:
                expected[masks[part]] = k
        rep = image_size // mask_size
        colour = PALETTE[np.kron(expected, np.ones((rep, rep), dtype=np.uint8))]
        Image.fromarray(colour).save(root / "CelebA-HQ-img" / f"{i}.jpg", quality=95)
        out["masks"][str(i)] = masks
        out["expected19"][str(i)] = expected
    rows = []
    for i in [*ids, max(ids) + 1]:  # the last id has attributes but no image
        vals = rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))
        out["attr_values"][str(i)] = vals
        rows.append(f"{i}.jpg  " + " ".join(str(v) for v in vals))
    (root / "CelebAMask-HQ-attribute-anno.txt").write_text(
        f"{len(rows)}\n" + " ".join(CELEBA_ATTRIBUTES) + "\n" + "\n".join(rows) + "\n")
    if with_mapping:
        # CelebA file numbers straddling the official partition boundaries.
        numbers = [162770, 162771, 182637, 182638, 1, 202599, 100000, 170000, 190000, 5]
        lines = ["idx orig_idx orig_file"]
        for k, i in enumerate(ids):
            num = numbers[k % len(numbers)]
            lines.append(f"{i} {num - 1} {num:06d}.jpg")
            out["partition"][str(i)] = ("train" if num <= 162770 else
                                        "val" if num <= 182637 else "test")
        (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
    return out
