"""BridgeTower models: configs, towers, the encoder and task models, checkpoint conversion,
the processor.  Every public name of the submodules below (their ``__all__``) is importable
from here, listed once, in the module that defines it.  See docs/architecture.md.
"""

from . import (
    base,
    config,
    downstream,
    factory,
    layer_keys,
    managertower,
    model,
    outputs,
    pretraining,
    processor,
    task_base,
    tasks,
    tokenizer,
    towers,
    unimodal,
)
from .base import *  # noqa: F403
from .config import *  # noqa: F403
from .downstream import *  # noqa: F403
from .factory import *  # noqa: F403
from .layer_keys import *  # noqa: F403
from .managertower import *  # noqa: F403
from .model import *  # noqa: F403
from .outputs import *  # noqa: F403
from .pretraining import *  # noqa: F403
from .processor import *  # noqa: F403
from .task_base import *  # noqa: F403
from .tasks import *  # noqa: F403
from .tokenizer import *  # noqa: F403
from .towers import *  # noqa: F403
from .unimodal import *  # noqa: F403

__all__ = [
    *base.__all__,
    *config.__all__,
    *factory.__all__,
    *model.__all__,
    *managertower.__all__,
    *outputs.__all__,
    *task_base.__all__,
    *tasks.__all__,
    *pretraining.__all__,
    *downstream.__all__,
    *unimodal.__all__,
    *towers.__all__,
    *processor.__all__,
    *tokenizer.__all__,
    *layer_keys.__all__,
]
