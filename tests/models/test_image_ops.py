"""pad_images (the one image padding of the package) and the CLIP normalisation constants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridgetower.models.image_ops import CLIP_MEAN, CLIP_STD, pad_images


def _image(c, h, w, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((c, h, w), generator=g) + 0.5).to(dtype)  # no zeros: padding shows


def test_clip_constants_are_the_clip_values():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    from bridgetower.data import CLIP_MEAN as data_mean
    from bridgetower.data import CLIP_STD as data_std
    from bridgetower.models.processor import CLIP_MEAN as proc_mean

    assert data_mean is CLIP_MEAN and data_std is CLIP_STD and proc_mean is CLIP_MEAN


@pytest.mark.parametrize("as_numpy", [False, True])
def test_mixed_sizes_top_left_zero_padded(as_numpy):
    sizes = [(5, 7), (9, 4), (3, 3), (9, 7)]
    images = [_image(3, h, w, i) for i, (h, w) in enumerate(sizes)]
    inputs = [im.numpy() for im in images] if as_numpy else images
    values, mask = pad_images(inputs)
    assert values.shape == (4, 3, 9, 7) and mask.shape == (4, 9, 7)
    assert values.dtype == torch.float32 and mask.dtype == torch.int64
    for i, (h, w) in enumerate(sizes):
        expect = torch.zeros(3, 9, 7)
        expect[:, :h, :w] = images[i]
        assert torch.equal(values[i], expect)
        expect_mask = torch.zeros(9, 7, dtype=torch.int64)
        expect_mask[:h, :w] = 1
        assert torch.equal(mask[i], expect_mask)


def test_equal_sizes_stack_with_a_full_mask():
    images = [_image(3, 4, 6, i) for i in range(3)]
    values, mask = pad_images(images)
    assert torch.equal(values, torch.stack(images))
    assert mask.dtype == torch.int64 and bool(mask.all()) and mask.shape == (3, 4, 6)


def test_dtype_follows_the_first_image_unless_given():
    images = [_image(3, 2, 2, 0, torch.float64), _image(3, 3, 1, 1, torch.float32)]
    values, _ = pad_images(images)
    assert values.dtype == torch.float64
    assert torch.equal(values[1, :, :3, :1], images[1].double())
    values, mask = pad_images([im.numpy() for im in images], dtype=torch.float32)
    assert values.dtype == torch.float32 and mask.dtype == torch.int64
    half, _ = pad_images([_image(1, 2, 2, 3, torch.float16)])
    assert half.dtype == torch.float16 and half.shape == (1, 1, 2, 2)


def test_size_pads_beyond_the_largest_image():
    images = [_image(3, 2, 3, 0), _image(3, 4, 1, 1)]
    values, mask = pad_images(images, size=(5, 6))
    assert values.shape == (2, 3, 5, 6)
    assert mask[0].sum() == 6 and mask[1].sum() == 4 and mask[:, 4:].sum() == 0
    assert torch.equal(values[1, :, :4, :1], images[1]) and values[1, :, :, 1:].abs().sum() == 0
    same, full = pad_images([_image(3, 5, 6, 2)], size=(5, 6))
    assert same.shape == (1, 3, 5, 6) and bool(full.all())


def test_matches_the_processor_pad():
    from bridgetower.models.processor import ImageProcessor

    arrays = [np.random.default_rng(i).standard_normal((3, h, w)).astype(np.float32) for i, (h, w) in
              enumerate([(32, 64), (64, 32), (64, 64)])]
    values, mask = ImageProcessor(64).pad(arrays)
    assert isinstance(values, np.ndarray) and values.dtype == np.float32 and mask.dtype == np.int64
    ours_v, ours_m = pad_images(arrays)
    assert np.array_equal(values, ours_v.numpy()) and np.array_equal(mask, ours_m.numpy())


def test_bad_input():
    with pytest.raises(ValueError, match="empty"):
        pad_images([])
    with pytest.raises(TypeError, match="list of"):
        pad_images(torch.zeros(2, 3, 4, 4))
    with pytest.raises(TypeError, match=r"images\[1\]"):
        pad_images([torch.zeros(3, 2, 2), [[0.0]]])
    with pytest.raises(ValueError, match=r"images\[0\] must be \(C, H, W\)"):
        pad_images([torch.zeros(2, 2)])
    with pytest.raises(ValueError, match="same number of channels"):
        pad_images([torch.zeros(3, 2, 2), torch.zeros(1, 2, 2)])
    with pytest.raises(ValueError, match="smaller than the largest image"):
        pad_images([torch.zeros(3, 4, 4)], size=(3, 8))
