"""ImageNet validation images with labels, for the perturbation / classification experiments.

Two layouts:
- folder layout `ROOT/<wnid>/*.JPEG` (torchvision ImageFolder / timm): labels are ImageNet-1k
  indices in sorted-wnid order. When every folder name is an ImageNet-1k wnid the index comes from the
  full 1k table (so a partial copy with a few classes keeps the right labels); otherwise the sorted
  folder order is used (ImageFolder's rule).
- flat layout `ROOT/*.JPEG` with a labels file: lines `name label` (whitespace or comma separated;
  label = 0-based index or a wnid), or one label per line in sorted file-name order. Without a labels
  file, file names that start with a wnid (`n01440764_tench.JPEG`) give the label; otherwise -1.

Images get the usual eval transform (shorter side to size/0.875, centre crop) unless resize="exact".
"""

from __future__ import annotations

import re
from pathlib import Path

from torch.utils.data import Dataset

from fvit.data._io import as_hw, list_images, load_rgb_tensor
from fvit.errors import InputError

WNID = re.compile(r"^(n\d{8})")


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in index order (sorted), from timm's bundled metadata."""
    try:
        from timm.data import ImageNetInfo

        return list(ImageNetInfo().label_names())
    except Exception:  # noqa: BLE001 - timm missing or without the info table
        return []


def _wnid_index(wnids: list[str]) -> dict[str, int]:
    table = imagenet_wnids()
    if table and set(wnids) <= set(table):
        return {w: i for i, w in enumerate(table)}
    return {w: i for i, w in enumerate(sorted(set(wnids)))}


def _read_labels_file(path: Path, names: list[str]) -> dict[str, int]:
    if not path.is_file():
        raise InputError(f"labels file not found: {path}")
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    pairs = [re.split(r"[,\s]+", ln, maxsplit=1) for ln in lines]
    if pairs and all(len(p) == 1 for p in pairs):  # one label per line, sorted file order
        if len(pairs) != len(names):
            raise InputError(f"{path}: {len(pairs)} labels for {len(names)} images (one label per line)")
        raw = dict(zip(names, (p[0] for p in pairs)))
    else:
        bad = [ln for ln, p in zip(lines, pairs) if len(p) != 2]
        if bad:
            raise InputError(f"{path}: cannot read line {bad[0]!r} (expected 'name label')")
        raw = {Path(p[0]).name: p[1].strip() for p in pairs}
    wn = [v for v in raw.values() if WNID.match(v)]
    index = _wnid_index(wn) if wn else {}
    out = {}
    for name, v in raw.items():
        if v in index:
            out[name] = index[v]
        else:
            try:
                out[name] = int(v)
            except ValueError:
                raise InputError(f"{path}: label {v!r} for {name} is neither an index nor a wnid") from None
    return out


class LabeledImages(Dataset):
    """A list of (path, label) with stable ids; items {image, label, id}."""

    def __init__(self, paths: list[Path], labels: list[int], ids: list[str],
                 size: int | tuple[int, int] = 224, resize: str = "crop"):
        self.paths, self.labels, self.ids = paths, labels, ids
        self.size, self.resize = as_hw(size), resize

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = load_rgb_tensor(self.paths[index], self.size, self.resize)
        return {"image": image, "label": int(self.labels[index]), "id": self.ids[index]}


def imagenet_val(root: str | Path, size: int | tuple[int, int] = 224, labels_file: str | Path | None = None,
                 resize: str = "crop") -> LabeledImages:
    """Open an ImageNet-val copy in the folder layout, or a flat folder (+ optional labels file)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"ImageNet validation folder not found: {root}")
    if labels_file is None and (root / "val").is_dir():
        root = root / "val"
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if subdirs and labels_file is None:
        index = _wnid_index([d.name for d in subdirs])
        paths, labels = [], []
        for d in subdirs:
            files = list_images(d)
            paths += files
            labels += [index[d.name]] * len(files)
        ids = [f"{p.parent.name}/{p.name}" for p in paths]
    else:
        paths = list_images(root)
        names = [p.name for p in paths]
        if labels_file is not None:
            table = _read_labels_file(Path(labels_file), names)
            missing = [n for n in names if n not in table]
            if missing:
                raise InputError(f"{labels_file}: no label for {len(missing)} images, e.g. {missing[0]}")
            labels = [table[n] for n in names]
        else:
            wn = [m.group(1) if (m := WNID.match(n)) else None for n in names]
            index = _wnid_index([w for w in wn if w]) if any(wn) else {}
            labels = [index.get(w, -1) if w else -1 for w in wn]
        ids = names
    if not paths:
        raise InputError(f"no images found under {root}")
    return LabeledImages(paths, labels, ids, size, resize)
