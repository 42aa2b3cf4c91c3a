"""iter_batches: worker-prefetched batches (pinned memory or not) equal the in-process ones."""

import torch

from fvit.data import iter_batches


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return {"image": torch.full((3, 4, 4), float(i)), "label": i, "id": f"x{i}"}


def test_workers_give_the_same_batches_in_order():
    chunks = [[4, 0], [2], [1, 3]]
    plain = list(iter_batches(Items(), chunks))
    loaded = list(iter_batches(Items(), chunks, num_workers=1, pin_memory=False))
    assert [b["id"] for b in plain] == [["x4", "x0"], ["x2"], ["x1", "x3"]] == [b["id"] for b in loaded]
    for a, b in zip(plain, loaded):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert plain[0]["image"][0, 0, 0, 0] == 4 and plain[2]["label"].tolist() == [1, 3]
