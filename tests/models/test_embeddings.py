"""embed_text / embed_image / embed_pair against ``transformers``' contrastive model (identical
weights) and against our pretraining model's own ITC forward; the string / image calls."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers
from hf_reference import batch, hf_config, perturbed  # tests/models/hf_reference.py

from bridgetower.data.scenes import build_scene_tokenizer, make_scene
from bridgetower.data.transforms import ImageTransform
from bridgetower.models import (
    BridgeTowerForContrastiveLearning,
    create_model,
)


@pytest.fixture(scope="module")
def contrastive_pair():
    hf = perturbed(transformers.BridgeTowerForContrastiveLearning, hf_config())
    return hf, BridgeTowerForContrastiveLearning.from_pretrained(hf).eval()


def _cos(a, b):
    return F.cosine_similarity(a.double(), b.double(), dim=-1).min().item()


def test_equal_to_transformers_contrastive_embeddings(contrastive_pair):
    hf, ours = contrastive_pair
    ids, mask, px = batch(b=3)  # padded texts
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px)
        text, image, cross = ours.embed_text(ids, mask), ours.embed_image(px), ours.embed_pair(ids, mask, px)
        # batched in chunks and one row at a time: the same vectors
        assert torch.allclose(ours.embed_text(ids, mask, batch_size=2), text, atol=1e-6)
        assert torch.allclose(ours.embed_image(px[1]), image[1:2], atol=1e-6)
    for got, want in ((text, ref.text_embeds), (image, ref.image_embeds), (cross, ref.cross_embeds)):
        assert got.shape == want.shape == (3, 32)
        assert _cos(got, want) >= 0.9999
        assert torch.allclose(got.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert ours.embedding_dim == 32


def test_text_and_image_embeddings_need_no_other_modality(contrastive_pair):
    hf, ours = contrastive_pair
    ids, mask, px = batch(b=3)
    with torch.no_grad():
        other = hf(input_ids=ids, attention_mask=mask, pixel_values=torch.randn_like(px))
        # HF's text embedding does not depend on the image it was given: ours needs none
        assert _cos(ours.embed_text(ids, mask), other.text_embeds) >= 0.9999


def test_pretraining_model_embeds_with_its_itc_head():
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task="pretraining").eval()
    with torch.no_grad():
        for p in model.parameters():  # no zero bias, no identity LayerNorm
            p.add_(torch.randn_like(p) * 0.02)
    ids = torch.randint(5, 60, (3, 9))
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0
    px = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = model(ids, mask, px)
        assert _cos(model.embed_text(ids, mask), out.itc_text_embeds) >= 0.99999
        assert _cos(model.embed_image(px), out.itc_image_embeds) >= 0.99999
        want_pair = F.normalize(model(ids, mask, px).encoder_output.pooler_output, dim=-1)
        assert _cos(model.embed_pair(ids, mask, px), want_pair) >= 0.99999
        # bfloat16: the dtype the model runs in, still unit vectors near the float32 ones
        ref = model.embed_image(px)
        model16 = create_model("bridgetower-tiny", task="pretraining").eval()
        model16.load_state_dict(model.state_dict())
        model16.to(torch.bfloat16)
        got = model16.embed_image(px)
    assert got.dtype == torch.bfloat16
    assert torch.allclose(got.float().norm(dim=-1), torch.ones(3), atol=1e-2)
    assert _cos(got.float(), ref) > 0.98


def test_without_itc_head_raises():
    model = create_model("bridgetower-tiny", task="pretraining", itc_dim=0).eval()
    assert model.itc is None
    with pytest.raises(ValueError, match="no ITC head"):
        model.embed_text(torch.tensor([[0, 7, 2]]))


def test_strings_and_images_convenience(tmp_path, capsys):
    tok = build_scene_tokenizer()
    model = create_model("bridgetower-tiny", task="pretraining", text={"vocab_size": len(tok)}).eval()
    texts = ["a red circle on the left", "a blue square", "a green triangle at the top"]
    images, paths = [], []
    for i in range(5):
        im, _ = make_scene(7, i)
        images.append(im)
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    enc = tok(texts, padding=True, return_tensors="pt")
    transform = ImageTransform(64)
    with torch.no_grad():
        want_t = model.embed_text(enc["input_ids"], enc["attention_mask"])
        want_i = model.embed_image(torch.stack([transform(im) for im in images]))
    assert torch.allclose(model.embed_texts(texts, tok, batch_size=2), want_t, atol=1e-5)
    assert torch.allclose(model.embed_images(images, batch_size=2), want_i, atol=1e-5)
    assert torch.allclose(model.embed_images([str(p) for p in paths], progress=True), want_i, atol=1e-5)
    assert "embed images" in capsys.readouterr().err  # the progress bar


def test_bad_inputs_name_the_argument(contrastive_pair):
    _, ours = contrastive_pair
    tok = build_scene_tokenizer()
    ids, mask, px = batch(b=3)
    with pytest.raises(ValueError, match="texts is empty"):
        ours.embed_texts([], tok)
    with pytest.raises(TypeError, match="texts must be a list"):
        ours.embed_texts("a red circle", tok)
    with pytest.raises(ValueError, match="texts must be non-empty strings"):
        ours.embed_texts(["ok", ""], tok)
    with pytest.raises(ValueError, match="images is empty"):
        ours.embed_images([])
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL image or a path"):
        ours.embed_images([make_scene(0, 0)[0], 3])
    with pytest.raises(ValueError, match=r"images\[0\]: no image file"):
        ours.embed_images(["/nonexistent/x.png"])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ours.embed_text(ids, mask, batch_size=0)
    with pytest.raises(ValueError, match="pixel_values must be a non-empty"):
        ours.embed_image(torch.randn(2, 1, 32, 32))
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor"):
        ours.embed_image([1, 2])
    with pytest.raises(ValueError, match=r"3 texts \(input_ids\) but 1 images"):
        ours.embed_pair(ids, mask, px[:1])
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        ours.embed_text("a red circle")
