"""The training input path (the dataset's flip, the model's resize and normalization), batching and the grouped batch sampler."""
from pathlib import Path
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from mrcnn_nb.data import COCODataset, GroupedBatchSampler, RandomHorizontalFlip, aspect_ratio_groups
from mrcnn_nb.model import Transform
from mrcnn_nb.shapes import make_shapes
from mrcnn_nb.train import collate_lists


def test_training_pipeline_end_to_end(shapes_root):
    ds = COCODataset(shapes_root, "train", transforms=RandomHorizontalFlip(0.5), skip_empty=True)
    sampler = GroupedBatchSampler(RandomSampler(ds, generator=torch.Generator().manual_seed(0)), aspect_ratio_groups(ds.image_sizes()), 4)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate_lists, num_workers=2)
    model_input = Transform(min_size=(160, 192), max_size=300).train()
    seen = 0
    for images, targets, bad in loader:
        assert not bad
        batch, targets = model_input(images, targets)
        assert batch.tensors.dtype == torch.float32 and batch.tensors.shape[-1] % 32 == 0 and batch.tensors.shape[-2] % 32 == 0
        for (h, w), t in zip(batch.image_sizes, targets):
            assert min(h, w) in (160, 192) and t["masks"].shape[-2:] == (h, w)
            assert (t["boxes"][:, 2:] <= torch.tensor([w, h])).all() and (t["boxes"] >= 0).all()
        seen += len(targets)
    assert seen == len(ds)


def test_resize_keeps_masks_binary_and_boxes_tight(shapes_root):
    ds = COCODataset(shapes_root, "val")
    model_input = Transform(min_size=(256,), max_size=1000).eval()
    for i in range(8):
        img, t = model_input.resize(*ds[i])
        assert img.shape[-2:] == (256, 256) and set(t["masks"].unique().tolist()) <= {0, 1}
        for m, b in zip(t["masks"], t["boxes"]):
            ys, xs = torch.where(m > 0)
            if len(xs):  # nearest-neighbour masks stay within a pixel of the scaled box
                assert abs(xs.min().item() - b[0].item()) <= 2 and abs(xs.max().item() + 1 - b[2].item()) <= 2


def test_resized_sizes():
    size = lambda h, w: tuple(Transform(min_size=(800,), max_size=1333).eval().resize(torch.zeros(3, h, w), None)[0].shape[1:])
    assert size(480, 640) == (800, 1066) and size(100, 1000) == (133, 1333)


def test_grouped_sampler_under_distributed_sampler(tmp_path):
    root = make_shapes(tmp_path, n_train=0, n_val=0, progress=False)  # only to have a root; groups are synthetic here
    groups = [i % 3 == 0 for i in range(37)]
    groups = [int(g) for g in groups]
    for drop_last in (False, True):
        counts, covered = [], []
        for rank in range(3):
            s = DistributedSampler(range(37), num_replicas=3, rank=rank, shuffle=True, seed=1)
            gbs = GroupedBatchSampler(s, groups, 4, drop_last=drop_last)
            batches = list(gbs)
            assert len(batches) == len(gbs)
            counts.append(len(batches)); covered += [i for b in batches for i in b]
            full_group = [b for b in batches if len(b) == 4][: len(batches) - 1]
            assert sum(len({groups[i] for i in b}) == 1 for b in batches) >= len(batches) - 1
        assert len(set(counts)) == 1  # every rank takes the same number of steps
        if not drop_last: assert set(covered) == set(range(37))


def test_portrait_and_landscape_groups(tmp_path):
    a = make_shapes(tmp_path / "l", n_train=0, n_val=3, size="96x64", progress=False)
    assert aspect_ratio_groups(COCODataset(a, "val").image_sizes()) == [0, 0, 0]
    b = make_shapes(tmp_path / "p", n_train=0, n_val=2, size="64x96", progress=False)
    assert aspect_ratio_groups(COCODataset(b, "val").image_sizes()) == [1, 1]


def _mode_files(d: Path) -> dict:
    "One file per image mode users have, each with the RGB picture a viewer shows for it."
    import numpy as np
    from PIL import Image
    rgb = np.stack([*np.meshgrid(np.arange(0, 240, 20), np.arange(0, 160, 20), indexing="xy"), np.full((8, 12), 90)], -1)
    rgb = rgb.astype(np.uint8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    grey3 = np.repeat(grey[..., None], 3, 2)
    out = {}
    def save(name, im, want, **kw):
        im.save(d / name, **kw)
        out[name] = want
    save("rgb.png", Image.fromarray(rgb), rgb)
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full((8, 12), 255, np.uint8)])), rgb)
    save("l.png", Image.fromarray(grey), grey3)
    save("la.png", Image.fromarray(grey).convert("LA"), grey3)
    pal = Image.fromarray((np.arange(96) % 3).reshape(8, 12).astype(np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    save("p.png", pal, np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)[np.arange(96).reshape(8, 12) % 3])
    bits = (np.indices((8, 12)).sum(0) % 2).astype(bool)
    save("one.png", Image.fromarray(bits), np.repeat(bits[..., None] * np.uint8(255), 3, 2))
    save("cmyk.tif", Image.fromarray(rgb).convert("CMYK"), rgb)
    save("i16.png", Image.fromarray(grey.astype(np.uint16) * 257), grey3)
    save("i32.tif", Image.fromarray(grey.astype(np.int32) * 257), grey3)
    save("f.tif", Image.fromarray(grey.astype(np.float32) / 255), grey3)
    exif = Image.Exif()
    exif[0x0112] = 8                  # orientation 8: a viewer turns the stored picture 90° counter-clockwise
    save("phone.jpg", Image.fromarray(rgb), np.rot90(rgb).copy(), exif=exif, quality=100, subsampling=0)
    return out


def test_every_image_mode_reads_as_the_picture_a_viewer_shows(tmp_path):
    from mrcnn_nb.data import read_image
    for name, want in _mode_files(tmp_path).items():
        got = read_image(tmp_path / name).permute(1, 2, 0).numpy()
        assert got.shape == want.shape, (name, got.shape, want.shape)
        tol = 3 if name.endswith(".jpg") else 0          # JPEG at quality 100 still rounds a little
        err = abs(got.astype(int) - want.astype(int)).max()
        assert err <= tol, f"{name}: off by up to {err}"
