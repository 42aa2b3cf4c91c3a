"""A folder of images with binary mask PNGs matched by file stem (COCO-style foreground masks).

`images/…/x.jpg` + `masks/x.png` (non-zero = foreground). Images are resized to the requested size
without crop, masks nearest-resized, as for ImageNet-segmentation. Images without a mask are left
out (`unmatched` lists them); labels are -1 (or taken from an optional `labels` mapping stem -> int).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from fvit.data._io import as_hw, list_images, load_rgb_tensor, mask_to_tensor, open_image
from fvit.errors import InputError


def check_decodes(path: Path, what: str) -> None:
    """Decode `path` (a JPEG at 1/8 scale: cheap) or raise InputError naming it."""
    from fvit.data._io import _no_pillow_limit

    try:
        with _no_pillow_limit(), Image.open(path) as im:
            if im.format == "JPEG":
                im.draft(im.mode, (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot read {what} {path}: {e}") from None


class MaskFolder(Dataset):
    def __init__(self, images_dir: str | Path, masks_dir: str | Path, size: int | tuple[int, int] = 224,
                 labels: dict[str, int] | None = None):
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        for d, what in ((self.images_dir, "images"), (self.masks_dir, "masks")):
            if not d.is_dir():
                raise InputError(f"{what} folder not found: {d}")
        self.size = as_hw(size)
        masks = {p.stem: p for p in list_images(self.masks_dir)}
        images = list_images(self.images_dir)
        self.pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
        self.unmatched = [p for p in images if p.stem not in masks]
        if not self.pairs:
            raise InputError(
                f"no image in {self.images_dir} has a mask with the same stem in {self.masks_dir}"
            )
        self.ids = [p.stem for p, _ in self.pairs]
        self.labels = labels or {}
        for img_path, mask_path in self.pairs:  # every file decodes: a bad one stops the run before any batch
            open_image(img_path, self.size)  # InputError naming the file (the loader's own checks)
            check_decodes(mask_path, "mask")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        img_path, mask_path = self.pairs[index]
        try:
            with Image.open(mask_path) as m:
                mask = mask_to_tensor(m.convert("L"), self.size)
        except OSError as e:
            raise InputError(f"cannot read mask {mask_path}: {e}") from None
        stem = self.ids[index]
        return {"image": load_rgb_tensor(img_path, self.size, "exact"), "label": int(self.labels.get(stem, -1)),
                "mask": mask, "id": stem}
