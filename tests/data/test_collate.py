"""Collators: MLM masking statistics, protection of special tokens, ITM and hard negatives."""

from __future__ import annotations

import pytest
import torch

from bridgetower.data import (
    SKIP_REASONS,
    PretrainingCollator,
    Skipped,
    SkipStats,
    apply_hard_negatives,
    build_scene_tokenizer,
    is_empty_batch,
    itm_inputs,
    mask_selected_tokens,
    mask_tokens,
    negative_exclusion,
    sample_hard_negatives,
    sample_itm_negatives,
)

MASK = 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_ids(b: int, l: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, vocab, (b, l), generator=_gen(seed))


def test_mask_rate_split_and_labels():
    vocab = 1000
    ids = _random_ids(400, 64, vocab)
    protected = torch.zeros_like(ids, dtype=torch.bool)
    protected[:, 0] = protected[:, -7:] = True  # "<s>" and padding
    candidates = torch.arange(5, vocab)
    masked, labels = mask_tokens(
        ids, mask_token_id=MASK, random_token_ids=candidates, protected=protected, generator=_gen(1)
    )
    chosen = labels != -100
    assert not chosen[protected].any()
    assert torch.equal(masked[protected], ids[protected])
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])  # only chosen positions change
    rate = chosen.sum().item() / (~protected).sum().item()
    assert abs(rate - 0.15) < 0.01
    n = chosen.sum().item()  # ~3400 chosen tokens: 3 sigma of a share ~ 0.02
    as_mask = (masked[chosen] == MASK).float().mean().item()
    as_random = ((masked[chosen] != MASK) & (masked[chosen] != ids[chosen])).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    p_same = 1 / candidates.numel()  # a random replacement can draw the original token
    assert n > 3000
    assert abs(as_mask - 0.8) < 0.025
    assert abs(as_random - 0.1 * (1 - p_same)) < 0.02
    assert abs(unchanged - (0.1 + 0.1 * p_same)) < 0.02
    replaced = masked[chosen & (masked != MASK) & (masked != ids)]
    assert replaced.min() >= 5 and replaced.max() < vocab  # random tokens are never special


def test_mask_split_options_and_boost():
    ids = _random_ids(300, 64, 50)
    boost = list(range(5, 15))
    masked, labels = mask_tokens(
        ids,
        mask_token_id=MASK,
        random_token_ids=list(range(5, 50)),
        mlm_probability=0.1,
        boost_token_ids=boost,
        boost_probability=0.5,
        mask_replace_prob=1.0,
        random_replace_prob=0.0,
        generator=_gen(2),
    )
    chosen = labels != -100
    in_boost = torch.isin(ids, torch.tensor(boost))
    assert abs(chosen[in_boost].float().mean().item() - 0.5) < 0.03
    assert abs(chosen[~in_boost].float().mean().item() - 0.1) < 0.015
    assert (masked[chosen] == MASK).all()


def test_mask_is_deterministic_given_generator():
    ids = _random_ids(8, 20, 100)
    kw = dict(mask_token_id=MASK, random_token_ids=list(range(5, 100)))
    a = mask_tokens(ids, generator=_gen(5), **kw)
    b = mask_tokens(ids, generator=_gen(5), **kw)
    c = mask_tokens(ids, generator=_gen(6), **kw)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[1], c[1])


def test_mask_tokens_bad_inputs():
    ids = _random_ids(2, 5, 50)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, mask_token_id=MASK, random_token_ids=[5], mlm_probability=1.5)
    with pytest.raises(ValueError, match="<= 1"):
        mask_tokens(
            ids,
            mask_token_id=MASK,
            random_token_ids=[5],
            mask_replace_prob=0.9,
            random_replace_prob=0.2,
        )
    with pytest.raises(ValueError, match="2-D integer"):
        mask_tokens(ids.float(), mask_token_id=MASK, random_token_ids=[5])
    with pytest.raises(ValueError, match="shape of input_ids"):
        mask_tokens(
            ids,
            mask_token_id=MASK,
            random_token_ids=[5],
            protected=torch.zeros(3, 5, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="boost_probability"):
        mask_tokens(ids, mask_token_id=MASK, random_token_ids=[5], boost_token_ids=[6])


def test_mask_selected_tokens():
    ids = torch.tensor([[0, 5, 14, 20, 2, 1], [0, 5, 16, 5, 16, 2]])
    masked, labels = mask_selected_tokens(ids, [14, 16], mask_token_id=MASK)
    assert masked.tolist() == [[0, 5, 4, 20, 2, 1], [0, 5, 4, 5, 4, 2]]
    assert labels.tolist() == [[-100, -100, 14, -100, -100, -100], [-100, -100, 16, -100, 16, -100]]


def _samples(captions, image_ids=None, size=(8, 8)):
    tok = build_scene_tokenizer()
    out = []
    for i, cap in enumerate(captions):
        s = {
            "input_ids": torch.tensor(tok(cap)["input_ids"]),
            "pixel_values": torch.full((3, *size), float(i)),
        }
        if image_ids is not None:
            s["image_id"] = image_ids[i]
        out.append(s)
    return tok, out


CAPTIONS = [
    "a red circle on the left",
    "a blue square on the right and a green triangle on the left",
    "a yellow triangle at the top",
    "a purple circle at the bottom and a orange square at the top",
]


def test_collator_batch_layout_and_special_token_protection():
    captions = CAPTIONS * 16
    tok, samples = _samples(captions)
    col = PretrainingCollator.from_tokenizer(tok, mlm_probability=0.9)
    batch = col(samples, generator=_gen(0))
    b = len(samples)
    lengths = [len(tok(c)["input_ids"]) for c in captions]
    assert batch["input_ids"].shape == (b, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["pixel_values"].shape == (b, 3, 8, 8) and batch["pixel_mask"].all()
    assert batch["skipped"].tolist() == [0] * len(SKIP_REASONS)
    special = torch.isin(batch["input_ids"], torch.tensor(tok.all_special_ids)) | (
        batch["attention_mask"] == 0
    )
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert (batch["mlm_labels"][special] == -100).all()
    assert torch.equal(batch["mlm_input_ids"][special], batch["input_ids"][special])
    assert (batch["mlm_labels"][~special] != -100).float().mean() > 0.8
    random_ids = batch["mlm_input_ids"][
        (batch["mlm_labels"] != -100) & (batch["mlm_input_ids"] != MASK)
    ]
    assert random_ids.min() >= 5  # never a special token as a random replacement
    padded = PretrainingCollator.from_tokenizer(tok, pad_to_multiple_of=8).collate(samples[:2])
    assert (
        padded["input_ids"].shape[1] == 16
        and padded["attention_mask"].sum(1).tolist() == lengths[:2]
    )
    again = col(samples, generator=_gen(0))
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_collator_boost_token_ids():
    tok, samples = _samples(CAPTIONS * 50)
    colour = tok.convert_tokens_to_ids(["red", "blue", "green", "yellow", "purple", "orange"])
    col = PretrainingCollator.from_tokenizer(tok, boost_token_ids=colour, boost_probability=0.6)
    batch = col(samples, generator=_gen(3))
    is_colour = torch.isin(batch["input_ids"], torch.tensor(colour))
    chosen = batch["mlm_labels"] != -100
    assert abs(chosen[is_colour].float().mean().item() - 0.6) < 0.06
    other = (
        ~is_colour
        & (batch["attention_mask"] == 1)
        & ~torch.isin(batch["input_ids"], torch.tensor([0, 2]))
    )
    assert abs(chosen[other].float().mean().item() - 0.15) < 0.03


def test_itm_negatives_never_the_positive():
    # Duplicated images (same image_id) and identical captions in one batch.
    captions = [CAPTIONS[i % 3] for i in range(24)]
    image_ids = [i // 2 for i in range(24)]
    tok, samples = _samples(captions, image_ids)
    col = PretrainingCollator.from_tokenizer(tok)
    for seed in range(20):
        batch = col(samples, generator=_gen(seed))
        idx, lab = batch["itm_image_index"], batch["itm_labels"]
        assert (lab == 0).sum() == 12
        pos = lab == 1
        assert torch.equal(idx[pos], torch.arange(24)[pos])
        for i in torch.nonzero(lab == 0).squeeze(1).tolist():
            j = idx[i].item()
            assert j != i and image_ids[j] != image_ids[i] and captions[j] != captions[i]
    inputs = itm_inputs(batch)
    assert torch.equal(inputs["pixel_values"][:, 0, 0, 0], idx.float())
    assert torch.equal(inputs["labels"], lab)


def test_itm_rows_without_a_valid_negative_stay_positive():
    _, samples = _samples(["a red circle on the left"] * 4, image_ids=[0, 1, 2, 3])
    col = PretrainingCollator.from_tokenizer(build_scene_tokenizer())
    batch = col(samples, generator=_gen(0))  # identical captions: no image may be a negative
    assert batch["itm_labels"].tolist() == [1, 1, 1, 1]
    assert batch["itm_image_index"].tolist() == [0, 1, 2, 3]
    idx, lab = sample_itm_negatives(torch.zeros(5, 5, dtype=torch.bool), negative_fraction=0.0)
    assert lab.tolist() == [1] * 5


def test_hard_negative_sampler_distribution_and_exclusion():
    n_draws, n = 20000, 5
    row = torch.tensor([3.0, 1.0, 0.0, 2.0, -1.0])
    sim = row.expand(n_draws, n)
    exclude = torch.zeros(n_draws, n, dtype=torch.bool)
    exclude[:, 0] = True  # the positive
    picks = sample_hard_negatives(sim, exclude=exclude, generator=_gen(0))
    assert (picks != 0).all()
    freq = torch.bincount(picks, minlength=n).double() / n_draws
    expect = torch.softmax(row[1:].double(), 0)
    assert torch.allclose(freq[1:], expect, atol=0.015)
    # temperature sharpens
    sharp = sample_hard_negatives(sim, exclude=exclude, temperature=0.25, generator=_gen(1))
    assert (torch.bincount(sharp, minlength=n)[3] / n_draws) > 0.9
    # default exclusion is the diagonal
    sq = torch.randn(6, 6)
    for seed in range(50):
        assert (sample_hard_negatives(sq, generator=_gen(seed)) != torch.arange(6)).all()
    # a row with nothing allowed gets -1
    ex = torch.eye(3, dtype=torch.bool)
    ex[1] = True
    out = sample_hard_negatives(torch.zeros(3, 3), exclude=ex, generator=_gen(0))
    assert out[1] == -1 and (out[[0, 2]] != torch.tensor([0, 2])).all()
    with pytest.raises(ValueError, match="2-D"):
        sample_hard_negatives(torch.zeros(3))
    with pytest.raises(ValueError, match="shape of similarity"):
        sample_hard_negatives(torch.zeros(3, 3), exclude=torch.zeros(2, 3, dtype=torch.bool))


def test_apply_hard_negatives():
    captions = [CAPTIONS[i % 4] for i in range(16)]
    image_ids = [i // 2 for i in range(16)]
    tok, samples = _samples(captions, image_ids)
    col = PretrainingCollator.from_tokenizer(tok)
    batch = col(samples, generator=_gen(0))
    # Similarity that strongly prefers image 15 for every text (unless excluded).
    sim = torch.zeros(16, 16)
    sim[:, 15] = 50.0
    hard = apply_hard_negatives(batch, sim, fraction=1.0, generator=_gen(1))
    assert torch.equal(hard["itm_labels"], batch["itm_labels"])
    excl = negative_exclusion(batch["image_ids"], batch["input_ids"])
    for i in range(16):
        j = hard["itm_image_index"][i].item()
        if batch["itm_labels"][i] == 1:
            assert j == i
        else:
            assert not excl[i, j]
            if not excl[i, 15]:
                assert j == 15
    none = apply_hard_negatives(batch, sim, fraction=0.0, generator=_gen(1))
    assert torch.equal(none["itm_image_index"], batch["itm_image_index"])
    with pytest.raises(ValueError, match=r"\(B, B\)"):
        apply_hard_negatives(batch, torch.zeros(4, 4))
    with pytest.raises(ValueError, match="augment first"):
        apply_hard_negatives(col.collate(samples), sim)


def test_collate_pads_images_and_counts_skipped():
    tok, samples = _samples(CAPTIONS[:2])
    samples[1]["pixel_values"] = torch.ones(3, 6, 10)
    stats = SkipStats()
    marker = stats.add("unreadable_image", "x.jpg")
    col = PretrainingCollator.from_tokenizer(tok)
    batch = col.collate([samples[0], marker, samples[1], None, Skipped("empty_caption")])
    assert batch["pixel_values"].shape == (2, 3, 8, 10)
    assert batch["pixel_mask"][0].sum() == 64 and batch["pixel_mask"][1].sum() == 60
    assert (
        batch["pixel_mask"][1, :6, :10].all() and batch["pixel_values"][1, :, 6:].abs().sum() == 0
    )
    expected = dict.fromkeys(SKIP_REASONS, 0) | {
        "unreadable_image": 1,
        "empty_caption": 1,
        "bad_record": 1,
    }
    assert dict(zip(SKIP_REASONS, batch["skipped"].tolist(), strict=True)) == expected
    total = SkipStats()
    total.add_counts(batch["skipped"])
    assert total.as_dict() == expected and "skipped 3 samples" in total.summary()
    empty = col([Skipped("missing_file")])
    assert is_empty_batch(empty) and empty["skipped"].sum() == 1


def test_collator_tokenizes_captions_and_transforms_images():
    from PIL import Image

    tok = build_scene_tokenizer()
    col = PretrainingCollator.from_tokenizer(
        tok, max_length=5, transform=lambda im: torch.zeros(3, im.height, im.width)
    )
    batch = col.collate([{"caption": CAPTIONS[1], "image": Image.new("RGB", (4, 4))}])
    assert batch["input_ids"].tolist() == [
        tok(CAPTIONS[1], truncation=True, max_length=5)["input_ids"]
    ]
    assert batch["input_ids"][0, -1] == tok.eos_token_id
    assert batch["pixel_values"].shape == (1, 3, 4, 4)


def test_collator_bad_inputs():
    tok = build_scene_tokenizer()
    with pytest.raises(ValueError, match="vocab_size"):
        PretrainingCollator(pad_token_id=1, mask_token_id=4, special_token_ids=[0], vocab_size=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        PretrainingCollator(pad_token_id=1, mask_token_id=40, special_token_ids=[0], vocab_size=23)
    with pytest.raises(ValueError, match="boost_probability"):
        PretrainingCollator.from_tokenizer(tok, boost_token_ids=[14])
    with pytest.raises(ValueError, match="special tokens"):
        PretrainingCollator.from_tokenizer(tok, boost_token_ids=[0], boost_probability=0.5)
    with pytest.raises(ValueError, match="itm_negative_fraction"):
        PretrainingCollator.from_tokenizer(tok, itm_negative_fraction=2)
    col = PretrainingCollator.from_tokenizer(tok)
    with pytest.raises(ValueError, match="'input_ids' or 'caption'"):
        col.collate([{"pixel_values": torch.zeros(3, 2, 2)}])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        col.collate([{"input_ids": [0, 5, 2], "pixel_values": torch.zeros(2, 2)}])
    with pytest.raises(TypeError, match="dicts"):
        col.collate([(torch.zeros(3, 2, 2), [0, 5, 2])])
    with pytest.raises(ValueError, match="unknown skip reason"):
        Skipped("cosmic_ray")
