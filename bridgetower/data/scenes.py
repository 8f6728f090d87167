"""Synthetic scenes: small pillow images of coloured shapes, and captions that describe them.

A scene holds one or two objects. Each object has a shape (circle, square, triangle), a
colour (six of them) and a position (``left``/``right`` or ``top``/``bottom``). Two objects
are laid out side by side (left and right) or one above the other (top and bottom) and are
never identical in both shape and colour. Positions are jittered, sizes vary, and the
background is light grey with a little per-pixel noise.

Everything is generated on the fly from ``(seed, index)``: the same pair always gives the
same scene and the same pixels, so a dataset of any size costs no disk and a held-out set is
simply another seed. The structured description (:class:`Scene`) is kept next to the
image so an evaluator can build *one-attribute negatives* with :func:`alter_scene`: the
caption with one colour changed, one shape changed, or the positions swapped.

Captions mention the objects in a random order ("a blue square on the right and a red
circle on the left" is as likely as the other order), so a caption with swapped positions
is a plausible caption and cannot be rejected from the text alone.

The caption language is tiny: :func:`scene_vocabulary` lists every word, and
:func:`build_scene_tokenizer` builds the matching word-level tokenizer offline
(``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4, RoBERTa layout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLOURS",
    "SHAPES",
    "POSITIONS",
    "SPECIAL_TOKENS",
    "SceneConfig",
    "SceneObject",
    "Scene",
    "sample_scene",
    "render_scene",
    "make_scene",
    "alter_scene",
    "negative_caption",
    "scene_vocabulary",
    "build_scene_tokenizer",
    "scene_attribute_token_ids",
]

#: Colour name -> RGB. Far apart from each other and from the light background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
#: RoBERTa order: ids 0..4.
SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
_ATTRIBUTES = ("colour", "shape", "position")


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn.

    Fractions are of the image side. ``jitter`` moves an object centre along its layout axis
    by up to that fraction, and ``cross_jitter`` along the other axis (the caption does not
    say where an object is along the other axis). ``noise`` is the largest per-pixel
    deviation (in 0..255 units) of the background around ``background``.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 2
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    min_radius: float = 0.12
    max_radius: float = 0.17
    offset: float = 0.27
    jitter: float = 0.05
    cross_jitter: float = 0.15
    background: int = 228
    noise: int = 12

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {self.image_size!r}")
        if not (1 <= self.min_objects <= self.max_objects <= 2):
            raise ValueError(
                "need 1 <= min_objects <= max_objects <= 2, got "
                f"min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes:
            raise ValueError(f"shapes must be a non-empty subset of {SHAPES}, got {self.shapes}")
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown or not self.colours:
            raise ValueError(
                f"colours must be a non-empty subset of {tuple(COLOURS)}, got {self.colours}"
            )
        if self.max_objects == 2 and len(self.shapes) * len(self.colours) < 2:
            raise ValueError("two distinct objects need at least two (shape, colour) pairs")
        if not (0 < self.min_radius <= self.max_radius):
            raise ValueError(
                f"need 0 < min_radius <= max_radius, got {self.min_radius}, {self.max_radius}"
            )
        if self.offset + self.jitter + self.max_radius > 0.5 + 1e-9:
            # Objects on the two sides of one layout could overlap.
            raise ValueError(
                "offset + jitter + max_radius must be <= 0.5 so two objects never overlap, "
                f"got {self.offset} + {self.jitter} + {self.max_radius}"
            )
        if not (0 <= self.noise <= self.background <= 255 - self.noise):
            raise ValueError(
                f"background +- noise must stay in 0..255, got background={self.background}, "
                f"noise={self.noise}"
            )


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its attributes and where it was drawn (pixels)."""

    shape: str
    colour: str
    position: str
    center: tuple[float, float]  # (x, y) in pixels
    radius: float  # pixels

    def phrase(self) -> str:
        return f"a {self.colour} {self.shape} {_PHRASE[self.position]}"

    def same_look(self, other: SceneObject) -> bool:
        return self.shape == other.shape and self.colour == other.colour

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The drawn shape's bounding box ``(x0, y0, x1, y1)`` in pixels (see ``_draw``)."""
        cx, cy = self.center
        r = self.radius
        if self.shape == "square":
            return (cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r)
        if self.shape == "triangle":
            return (cx - r, cy - r, cx + r, cy + 0.8 * r)
        return (cx - r, cy - r, cx + r, cy + r)


@dataclass(frozen=True)
class Scene:
    """A scene: its objects in the order the caption mentions them, and its noise seed.

    ``render_scene(scene)`` draws exactly the same pixels every time.
    """

    objects: tuple[SceneObject, ...]
    image_size: int = 64
    noise_seed: int = 0
    config: SceneConfig = field(default_factory=SceneConfig, compare=False, repr=False)

    @property
    def caption(self) -> str:
        return " and ".join(obj.phrase() for obj in self.objects)

    def to_dict(self) -> dict:
        """A JSON-friendly description (what an evaluator or a log needs)."""
        return {
            "caption": self.caption,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "position": o.position} for o in self.objects
            ],
        }


def _check_seed(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _scene_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([_check_seed("seed", seed), _check_seed("index", index), 0x5CE7E])


def _place(
    position: str, rng: np.random.Generator, config: SceneConfig
) -> tuple[tuple[float, float], float]:
    s = config.image_size
    radius = rng.uniform(config.min_radius, config.max_radius) * s
    along = (0.5 - config.offset + rng.uniform(-config.jitter, config.jitter)) * s
    if position in ("right", "bottom"):
        along = s - along
    across = (0.5 + rng.uniform(-config.cross_jitter, config.cross_jitter)) * s
    # Keep the whole object inside the image.
    across = float(np.clip(across, radius + 1, s - radius - 1))
    center = (along, across) if position in ("left", "right") else (across, along)
    return (float(center[0]), float(center[1])), float(radius)


def sample_scene(rng: np.random.Generator, config: SceneConfig | None = None) -> Scene:
    """Draw a random scene description from ``rng`` (a ``numpy.random.Generator``)."""
    config = config or SceneConfig()
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    if n == 1:
        positions = [POSITIONS[int(rng.integers(len(POSITIONS)))]]
    else:
        positions = ["left", "right"] if rng.random() < 0.5 else ["top", "bottom"]
        if rng.random() < 0.5:  # order of mention
            positions.reverse()
    objects: list[SceneObject] = []
    for position in positions:
        while True:
            shape = config.shapes[int(rng.integers(len(config.shapes)))]
            colour = config.colours[int(rng.integers(len(config.colours)))]
            if not any(o.shape == shape and o.colour == colour for o in objects):
                break
        center, radius = _place(position, rng, config)
        objects.append(SceneObject(shape, colour, position, center, radius))
    noise_seed = int(rng.integers(2**31 - 1))
    return Scene(tuple(objects), config.image_size, noise_seed, config)


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    cx, cy = obj.center
    r = obj.radius
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        h = 0.85 * r  # about the area of the circle
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif obj.shape == "triangle":
        # Pointing up, centroid near (cx, cy + 0.1 r): the centre is well inside.
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    else:  # pragma: no cover - SceneObject is built by this module
        raise ValueError(f"unknown shape {obj.shape!r}; valid: {SHAPES}")


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB ``PIL.Image`` of ``scene.image_size`` squared pixels."""
    config = scene.config
    s = scene.image_size
    noise_rng = np.random.default_rng([scene.noise_seed, 0xB6])
    noise = noise_rng.integers(-config.noise, config.noise + 1, size=(s, s, 1), dtype=np.int16)
    tint = noise_rng.integers(-3, 4, size=(1, 1, 3), dtype=np.int16)  # a slight colour cast
    pixels = np.clip(config.background + noise + tint, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj)
    return image


def make_scene(
    seed: int, index: int, config: SceneConfig | None = None
) -> tuple[Image.Image, Scene]:
    """The scene number ``index`` of the stream ``seed``: ``(image, scene)``, deterministic."""
    scene = sample_scene(_scene_rng(seed, index), config)
    return render_scene(scene), scene


def alter_scene(scene: Scene, attribute: str, rng: np.random.Generator) -> Scene:
    """A copy of ``scene`` that differs in exactly one attribute (a one-attribute negative).

    ``attribute``:
      - ``"colour"``: one object (chosen at random) gets another colour;
      - ``"shape"``: one object gets another shape;
      - ``"position"``: two objects swap places; a single object moves to the opposite side.

    The result never has two identical objects, so its caption always differs from the
    original caption. The noise seed is kept: ``render_scene`` of the result draws the
    altered image on the same background.
    """
    if attribute == "color":
        attribute = "colour"
    if attribute not in _ATTRIBUTES:
        raise ValueError(f"attribute must be one of {_ATTRIBUTES}, got {attribute!r}")
    objs = list(scene.objects)
    if attribute == "position":
        s = scene.image_size
        if len(objs) == 1:
            o = objs[0]
            cx, cy = o.center
            center = (s - cx, cy) if o.position in ("left", "right") else (cx, s - cy)
            objs[0] = dataclasses.replace(o, position=_OPPOSITE[o.position], center=center)
        else:
            a, b = objs
            objs = [
                dataclasses.replace(a, position=b.position, center=b.center),
                dataclasses.replace(b, position=a.position, center=a.center),
            ]
        return dataclasses.replace(scene, objects=tuple(objs))

    config = scene.config
    choices = config.colours if attribute == "colour" else config.shapes
    candidates: list[tuple[int, str]] = []
    for k, o in enumerate(objs):
        current = o.colour if attribute == "colour" else o.shape
        for value in choices:
            if value == current:
                continue
            new = dataclasses.replace(o, **{attribute: value})
            if any(new.same_look(p) for j, p in enumerate(objs) if j != k):
                continue
            candidates.append((k, value))
    if not candidates:
        raise ValueError(
            f"cannot change the {attribute} of {scene.caption!r}: the scene config allows only "
            f"{choices}"
        )
    k, value = candidates[int(rng.integers(len(candidates)))]
    objs[k] = dataclasses.replace(objs[k], **{attribute: value})
    return dataclasses.replace(scene, objects=tuple(objs))


def negative_caption(scene: Scene, attribute: str, rng: np.random.Generator) -> str:
    """The caption of :func:`alter_scene` ``(scene, attribute, rng)``."""
    return alter_scene(scene, attribute, rng).caption


def scene_vocabulary(config: SceneConfig | None = None) -> list[str]:
    """Every word a caption can use (function words, positions, colours, shapes), in a fixed order."""
    config = config or SceneConfig()
    words = ["a", "and", "on", "at", "the", "left", "right", "top", "bottom"]
    return words + list(config.colours) + list(config.shapes)


def build_scene_tokenizer(
    vocabulary: Sequence[str] | None = None,
    *,
    model_max_length: int = 50,
    save_dir: str | None = None,
):
    """A RoBERTa-compatible word-level ``transformers`` tokenizer for the scene captions.

    Built offline by :func:`bridgetower.models.tokenizer.build_test_tokenizer` (``tokenizers``
    WordLevel): ids 0..4 are ``<s> <pad> </s> <unk> <mask>``, then the words of ``vocabulary``
    (default :func:`scene_vocabulary`, 18 words: 23 ids in all) in order. Captions are split
    on whitespace and wrapped as ``<s> ... </s>``; unknown words become ``<unk>``. With
    ``save_dir`` it is also saved there (``AutoTokenizer.from_pretrained`` loads it).
    """
    from bridgetower.models.tokenizer import build_test_tokenizer

    words = list(scene_vocabulary() if vocabulary is None else vocabulary)
    bad = [w for w in words if not isinstance(w, str) or not w or any(ch.isspace() for ch in w)]
    if bad:
        raise ValueError(f"vocabulary words must be non-empty strings without spaces, got {bad}")
    clash = sorted(set(words) & set(SPECIAL_TOKENS))
    if clash or len(set(words)) != len(words):
        raise ValueError(f"vocabulary has duplicates or special tokens: {clash or words}")
    return build_test_tokenizer(words, save_dir, model_max_length=model_max_length)


def scene_attribute_token_ids(tokenizer, config: SceneConfig | None = None) -> dict[str, list[int]]:
    """Token ids of the attribute words: ``{"colour": [...], "shape": [...], "position": [...]}``.

    Use them to mask attribute words more often during pretraining
    (``PretrainingCollator(boost_token_ids=...)``) and to measure MLM accuracy on masked
    colour / shape words.
    """
    config = config or SceneConfig()
    groups = {
        "colour": list(config.colours),
        "shape": list(config.shapes),
        "position": ["left", "right", "top", "bottom"],
    }
    out: dict[str, list[int]] = {}
    unk = tokenizer.unk_token_id
    for name, words in groups.items():
        ids = tokenizer.convert_tokens_to_ids(words)
        missing = [w for w, i in zip(words, ids, strict=True) if i is None or i == unk]
        if missing:
            raise ValueError(f"tokenizer has no token for the {name} words {missing}")
        out[name] = [int(i) for i in ids]
    return out
