"""Our NMS and box coding against torchvision on randomized inputs."""
import pytest
import torch
import torchvision

from mrcnn_nb.boxes import BoxCoder, batched_nms, box_iou, nms


def random_boxes(n, seed, size=500.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 3 + 0.5
    scores = torch.randperm(n, generator=g).to(torch.float64) / n  # distinct scores: no ties
    return torch.cat([xy, xy + wh], 1).to(dtype), scores.to(dtype)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_torchvision(seed, dtype):
    n = [1, 2, 10, 300, 2000][seed % 5]
    boxes, scores = random_boxes(n, seed, dtype=dtype)
    for t in (0.0, 0.3, 0.5, 0.7, 0.95):
        assert torch.equal(nms(boxes, scores, t), torchvision.ops.nms(boxes, scores, t)), (n, t)


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_matches_torchvision(seed):
    boxes, scores = random_boxes(800, seed)
    idxs = torch.randint(0, 12, (800,), generator=torch.Generator().manual_seed(seed))
    for t in (0.5, 0.7):
        assert torch.equal(batched_nms(boxes, scores, idxs, t), torchvision.ops.batched_nms(boxes, scores, idxs, t))


def test_nms_keeps_only_non_overlapping_and_all_suppressed_are_covered():
    boxes, scores = random_boxes(500, 0)
    keep = nms(boxes, scores, 0.5)
    iou = box_iou(boxes[keep], boxes[keep]); iou.fill_diagonal_(0)
    assert iou.max() <= 0.5
    dropped = torch.ones(500, dtype=torch.bool); dropped[keep] = False
    assert (box_iou(boxes[dropped], boxes[keep]).max(1).values > 0.5).all()


def test_box_coder_round_trip_and_torchvision_convention():
    boxes, _ = random_boxes(200, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    ref = boxes + torch.randn(200, 4, generator=g, dtype=torch.float64) * 5  # near boxes: dw, dh below the clamp
    ref[:, 2:] = torch.maximum(ref[:, 2:], ref[:, :2] + 1)
    for w in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(w)
        assert torch.allclose(coder.decode(coder.encode(boxes, ref), ref), boxes, atol=1e-9)
        far = ref.clone(); far[:, 2:] = far[:, :2] + 0.01  # tiny references: decoding clamps dw, dh
        dec = coder.decode(coder.encode(boxes, far), far)
        assert (dec[:, 2:] - dec[:, :2] <= 0.01 * 1000 / 16 + 1e-9).all()
        from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
        tv = TVBoxCoder(w)
        assert torch.allclose(coder.encode(boxes, ref), tv.encode_single(boxes, ref), atol=1e-9)
        d = torch.randn(200, 4, dtype=torch.float64) * 3
        assert torch.allclose(coder.decode(d, ref), tv.decode_single(d, ref), atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_nms_max_keep_is_the_head_of_the_full_result(seed):
    # the RPN and the box head stop NMS after their post_nms_top_n / detections_per_img boxes
    boxes, scores = random_boxes(1500, seed)
    idxs = torch.randint(0, 5, (1500,), generator=torch.Generator().manual_seed(seed))
    for t in (0.3, 0.7):
        full, batched = torchvision.ops.nms(boxes, scores, t), torchvision.ops.batched_nms(boxes, scores, idxs, t)
        for k in (0, 1, 99, 300, len(full), 5000):
            assert torch.equal(nms(boxes, scores, t, max_keep=k), full[:k]), (t, k)
            assert torch.equal(batched_nms(boxes, scores, idxs, t, max_keep=k), batched[:k]), (t, k)
