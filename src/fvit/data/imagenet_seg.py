"""ImageNet-segmentation (Guillaumin et al. 2014) from `gtsegs_ijcv.mat`, as evaluated by Chefer et
al. and both FViT papers.

File layout (MATLAB v7.3 = HDF5): `value/img` and `value/gt` are (N, 1) arrays of object references.
`value/img[i, 0]` points at the image stored transposed as (C, W, H) uint8; `value/gt[i, 0]` points
at a (1, 1) array of references whose `[0, 0]` points at the mask stored transposed as (W, H)
(non-zero = foreground). Images are resized to the model input size without crop (bilinear), masks
nearest-resized. The file has no class labels: `label` is -1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from fvit.data._io import as_hw, mask_to_tensor, pil_to_tensor01, resize_exact
from fvit.errors import InputError

IMG_KEY = "value/img"
GT_KEY = "value/gt"


class ImageNetSegmentation(Dataset):
    """Items: {image (3,H,W) [0,1], label -1, mask bool (H,W), id 'imagenet-seg/00042'}."""

    def __init__(self, path: str | Path, size: int | tuple[int, int] = 224):
        import h5py

        self.path = Path(path)
        self.size = as_hw(size)
        if not self.path.is_file():
            raise InputError(f"ImageNet-segmentation file not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                if IMG_KEY not in f or GT_KEY not in f:
                    raise InputError(
                        f"{self.path}: not a gtsegs_ijcv.mat layout (needs '{IMG_KEY}' and '{GT_KEY}')"
                    )
                for key in (IMG_KEY, GT_KEY):
                    ds = f[key]
                    if not isinstance(ds, h5py.Dataset) or h5py.check_ref_dtype(ds.dtype) is None \
                            or ds.ndim != 2 or ds.shape[1] != 1:
                        what = (f"a {type(ds).__name__}" if not isinstance(ds, h5py.Dataset)
                                else f"shape {ds.shape}, dtype {ds.dtype}")
                        raise InputError(f"{self.path}: '{key}' must be an (N, 1) array of object references "
                                         f"(the gtsegs_ijcv.mat layout), found {what}")
                n_img, n_gt = len(f[IMG_KEY]), len(f[GT_KEY])
        except OSError as e:
            raise InputError(f"cannot open {self.path} as HDF5 / MATLAB v7.3: {e}") from None
        if n_img != n_gt:
            raise InputError(f"{self.path}: {n_img} images but {n_gt} masks")
        self._n = n_img
        self.ids = [f"imagenet-seg/{i:05d}" for i in range(n_img)]
        self._h5 = None  # opened lazily, once per process (DataLoader workers / ranks)

    def __len__(self) -> int:
        return self._n

    def _file(self):
        if self._h5 is None:
            import h5py

            self._h5 = h5py.File(self.path, "r")
        return self._h5

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) mask at the stored resolution."""
        f = self._file()
        try:
            img = np.asarray(f[f[IMG_KEY][index, 0]]).transpose(2, 1, 0)
            inner = f[f[GT_KEY][index, 0]]
            gt = np.asarray(f[inner[0, 0]]).transpose(1, 0)
        except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
            raise InputError(f"{self.path}: image or mask {index} is not readable in the gtsegs_ijcv.mat layout "
                             f"({type(e).__name__}: {str(e)[:120]})") from None
        if gt.ndim != 2:
            raise InputError(f"{self.path}: mask {index} has shape {gt.shape} after transpose")
        if img.ndim != 3 or img.shape[-1] not in (1, 3):
            raise InputError(f"{self.path}: image {index} has shape {img.shape} after transpose")
        return img, gt

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self._n:
            raise IndexError(index)
        img, gt = self.read_raw(index)
        im = Image.fromarray(np.ascontiguousarray(img.astype(np.uint8)).squeeze()).convert("RGB")
        image = pil_to_tensor01(resize_exact(im, self.size))
        return {"image": image, "label": -1, "mask": mask_to_tensor(gt, self.size), "id": self.ids[index]}

    def __getstate__(self):  # h5py handles do not pickle (DataLoader workers, spawn)
        state = dict(self.__dict__)
        state["_h5"] = None
        return state

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def write_gtsegs_like(path: str | Path, images: list[np.ndarray], masks: list[np.ndarray]) -> None:
    """Write a small file in the `gtsegs_ijcv.mat` layout (for tests and examples).

    images: (H, W, 3) uint8; masks: (H, W) 0/1.
    """
    import h5py

    with h5py.File(path, "w") as f:
        ref = h5py.ref_dtype
        img_refs = f.create_dataset(IMG_KEY, (len(images), 1), dtype=ref)
        gt_refs = f.create_dataset(GT_KEY, (len(images), 1), dtype=ref)
        for i, (im, m) in enumerate(zip(images, masks)):
            d_img = f.create_dataset(f"#refs#/img{i}", data=np.asarray(im, np.uint8).transpose(2, 1, 0))
            d_gt = f.create_dataset(f"#refs#/gt{i}", data=np.asarray(m, np.uint8).transpose(1, 0))
            holder = f.create_dataset(f"#refs#/gtcell{i}", (1, 1), dtype=ref)
            holder[0, 0] = d_gt.ref
            img_refs[i, 0] = d_img.ref
            gt_refs[i, 0] = holder.ref


__all__ = ["ImageNetSegmentation", "write_gtsegs_like"]
