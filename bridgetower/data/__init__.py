"""Data: synthetic scenes, image-text pair datasets, image transforms and collators.

See docs/architecture.md and the ``data`` section of the README.
"""

from .collate import (
    PretrainingCollator,
    apply_hard_negatives,
    is_empty_batch,
    itm_inputs,
    mask_selected_tokens,
    mask_tokens,
    negative_exclusion,
    sample_hard_negatives,
    sample_itm_negatives,
)
from .datasets import (
    ImageTextDataset,
    SceneITMEvalDataset,
    SyntheticSceneDataset,
    WebDatasetPairs,
    load_image,
    read_index,
)
from .scenes import (
    COLOURS,
    POSITIONS,
    SHAPES,
    Scene,
    SceneConfig,
    SceneObject,
    alter_scene,
    build_scene_tokenizer,
    make_scene,
    negative_caption,
    render_scene,
    sample_scene,
    scene_attribute_token_ids,
    scene_vocabulary,
)
from .stats import SKIP_REASONS, Skipped, SkipStats
from .transforms import CLIP_MEAN, CLIP_STD, ImageTransform

__all__ = [
    "COLOURS",
    "POSITIONS",
    "SHAPES",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "alter_scene",
    "build_scene_tokenizer",
    "make_scene",
    "negative_caption",
    "render_scene",
    "sample_scene",
    "scene_attribute_token_ids",
    "scene_vocabulary",
    "SyntheticSceneDataset",
    "SceneITMEvalDataset",
    "ImageTextDataset",
    "WebDatasetPairs",
    "load_image",
    "read_index",
    "PretrainingCollator",
    "apply_hard_negatives",
    "is_empty_batch",
    "itm_inputs",
    "mask_selected_tokens",
    "mask_tokens",
    "negative_exclusion",
    "sample_hard_negatives",
    "sample_itm_negatives",
    "SKIP_REASONS",
    "Skipped",
    "SkipStats",
    "CLIP_MEAN",
    "CLIP_STD",
    "ImageTransform",
]
