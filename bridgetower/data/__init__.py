"""Data: synthetic scenes, image-text pair datasets, image transforms and collators.

Every public name of the submodules below (their ``__all__``) is importable from here, so
each name is listed once, in the module that defines it. See docs/architecture.md.
"""

from . import arrow, collate, datasets, downstream, scenes, stats, transforms
from .arrow import *  # noqa: F403
from .collate import *  # noqa: F403
from .datasets import *  # noqa: F403
from .downstream import *  # noqa: F403
from .scenes import *  # noqa: F403
from .stats import *  # noqa: F403
from .transforms import *  # noqa: F403

__all__ = [
    *scenes.__all__,
    *datasets.__all__,
    *collate.__all__,
    *stats.__all__,
    *transforms.__all__,
    *arrow.__all__,
    *downstream.__all__,
]
