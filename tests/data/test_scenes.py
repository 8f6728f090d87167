"""Synthetic scenes: determinism, captions that match the pixels, negatives, tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from bridgetower.data import (
    COLOURS,
    SceneConfig,
    alter_scene,
    build_scene_tokenizer,
    make_scene,
    render_scene,
    scene_attribute_token_ids,
    scene_vocabulary,
)

N_SCENES = 120


def _half(position: str, size: int) -> tuple[slice, slice]:
    h = size // 2
    return {
        "left": (slice(None), slice(0, h)),
        "right": (slice(None), slice(h, None)),
        "top": (slice(0, h), slice(None)),
        "bottom": (slice(h, None), slice(None)),
    }[position]


def _classify_shape(mask: np.ndarray) -> str:
    """Shape from a binary mask alone: fill ratio of the bounding box."""
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    fill = mask.sum() / box  # square ~1, circle ~pi/4, triangle ~1/2
    return "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"


def test_scenes_are_deterministic_and_seeds_differ():
    for index in (0, 7, 123456):
        a_img, a = make_scene(3, index)
        b_img, b = make_scene(3, index)
        assert a == b
        assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
        assert np.array_equal(np.asarray(render_scene(a)), np.asarray(a_img))
    caps_a = [make_scene(0, i)[1].caption for i in range(50)]
    caps_b = [make_scene(1, i)[1].caption for i in range(50)]
    assert caps_a != caps_b
    imgs = {np.asarray(make_scene(0, i)[0]).tobytes() for i in range(20)}
    assert len(imgs) == 20


def test_captions_match_the_drawn_objects():
    size = 64
    counts = {"objects": set(), "layout": set(), "first": set()}
    for index in range(N_SCENES):
        image, scene = make_scene(0, index)
        px = np.asarray(image).astype(int)
        assert px.shape == (size, size, 3)
        # The caption is built from the objects, word by word.
        phrases = [
            f"a {o.colour} {o.shape} "
            + {
                "left": "on the left",
                "right": "on the right",
                "top": "at the top",
                "bottom": "at the bottom",
            }[o.position]
            for o in scene.objects
        ]
        assert scene.caption == " and ".join(phrases)
        counts["objects"].add(len(scene.objects))
        for obj in scene.objects:
            rgb = np.array(COLOURS[obj.colour])
            cx, cy = obj.center
            # the colour named in the caption is at the object's centre ...
            assert np.array_equal(px[int(round(cy)), int(round(cx))], rgb), (index, scene.caption)
            # ... in the half of the image the caption names ...
            assert {
                "left": cx < size / 2,
                "right": cx > size / 2,
                "top": cy < size / 2,
                "bottom": cy > size / 2,
            }[obj.position]
            region = _half(obj.position, size)
            mask = np.all(px[region] == rgb, axis=-1)
            # ... and its pixels have the shape the caption names.
            assert mask.sum() > 60
            assert _classify_shape(mask) == obj.shape, (index, scene.caption)
        if len(scene.objects) == 2:
            a, b = scene.objects
            assert not (a.shape == b.shape and a.colour == b.colour)
            counts["layout"].add(frozenset((a.position, b.position)))
            counts["first"].add(a.position)
    assert counts["objects"] == {1, 2}
    assert counts["layout"] == {frozenset(("left", "right")), frozenset(("top", "bottom"))}
    assert counts["first"] == {"left", "right", "top", "bottom"}  # both orders of mention


def test_background_is_light_and_noisy():
    image, scene = make_scene(0, 5)
    px = np.asarray(image).astype(int)
    corner = px[:4, :4].reshape(-1, 3)
    assert corner.min() >= 200 and corner.std() > 2


@pytest.mark.parametrize("attribute", ["colour", "shape", "position"])
def test_alter_scene_changes_exactly_one_attribute(attribute):
    rng = np.random.default_rng(0)
    for index in range(60):
        _, scene = make_scene(2, index)
        alt = alter_scene(scene, attribute, rng)
        assert alt.caption != scene.caption
        assert len(alt.objects) == len(scene.objects)
        diff = [(o, p) for o, p in zip(scene.objects, alt.objects, strict=True) if o != p]
        if attribute in ("colour", "shape"):
            assert len(diff) == 1
            o, p = diff[0]
            others = {"colour", "shape", "position"} - {attribute}
            assert getattr(o, attribute) != getattr(p, attribute)
            assert all(getattr(o, k) == getattr(p, k) for k in others)
        else:
            if len(scene.objects) == 2:
                a, b = scene.objects
                assert [o.position for o in alt.objects] == [b.position, a.position]
                assert [(o.shape, o.colour) for o in alt.objects] == [
                    (a.shape, a.colour),
                    (b.shape, b.colour),
                ]
            else:
                opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
                assert alt.objects[0].position == opposite[scene.objects[0].position]
        if len(alt.objects) == 2:
            a, b = alt.objects
            assert not (a.shape == b.shape and a.colour == b.colour)


def test_alter_scene_rejects_unknown_attribute():
    _, scene = make_scene(0, 0)
    with pytest.raises(ValueError, match="attribute must be one of"):
        alter_scene(scene, "size", np.random.default_rng(0))


def test_tokenizer_layout_and_round_trip():
    tok = build_scene_tokenizer()
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == [
        "<s>",
        "<pad>",
        "</s>",
        "<unk>",
        "<mask>",
    ]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2, 4)
    assert len(tok) == 5 + len(scene_vocabulary()) == 23
    vocab = set(scene_vocabulary())
    for index in range(40):
        caption = make_scene(0, index)[1].caption
        assert set(caption.split()) <= vocab
        ids = tok(caption)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2 and tok.unk_token_id not in ids
        assert tok.convert_ids_to_tokens(ids[1:-1]) == caption.split()
        assert tok.decode(ids, skip_special_tokens=True) == caption
    assert tok("a pink circle")["input_ids"][2] == tok.unk_token_id


def test_attribute_token_ids():
    tok = build_scene_tokenizer()
    ids = scene_attribute_token_ids(tok)
    assert tok.convert_ids_to_tokens(ids["colour"]) == list(COLOURS)
    assert tok.convert_ids_to_tokens(ids["shape"]) == ["circle", "square", "triangle"]
    assert tok.convert_ids_to_tokens(ids["position"]) == ["left", "right", "top", "bottom"]
    small = build_scene_tokenizer(["a", "red"])
    with pytest.raises(ValueError, match="no token for the colour words"):
        scene_attribute_token_ids(small)


def test_bad_inputs():
    with pytest.raises(ValueError, match="seed"):
        make_scene(-1, 0)
    with pytest.raises(ValueError, match="index"):
        make_scene(0, 1.5)
    with pytest.raises(ValueError, match="max_objects"):
        SceneConfig(max_objects=3)
    with pytest.raises(ValueError, match="shapes"):
        SceneConfig(shapes=("hexagon",))
    with pytest.raises(ValueError, match="overlap"):
        SceneConfig(max_radius=0.3)
    with pytest.raises(ValueError, match="duplicates or special"):
        build_scene_tokenizer(["a", "<mask>"])
    with pytest.raises(ValueError, match="without spaces"):
        build_scene_tokenizer(["red circle"])
