"""The two usage snippets of the ``BridgeTower/bridgetower-large-itm-mlm`` model card, runnable
with ``transformers`` or with ``bridgetower``.

:data:`ITM_SNIPPET` (image-text matching scores over a list of texts) and :data:`MLM_SNIPPET`
(masked-word filling, decoded with ``processor.decode``) are the model card's code as
published.  :func:`adapt` makes a runnable variant of one of them, changing only:

* the import line, for ``library="bridgetower"``: ``from transformers import ...`` becomes
  ``from bridgetower import ...`` (same names);
* the image acquisition: instead of downloading a COCO image with ``requests``, the image is
  opened from a local file (``Image.open(image_file)``; the rest of that line, such as
  ``.convert("RGB")``, stays);
* the checkpoint: the Hub name becomes the variable ``checkpoint`` (a local directory in the
  Hugging Face format, or a Hub id where the network allows).

Every other line runs as published.  :func:`run` executes the result and returns its
namespace (``scores``, ``results``, ``encoding``, ``model``, ...) and what it printed.

Command line::

    python docs/model_card_snippets.py CHECKPOINT IMAGE [--library bridgetower]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
from typing import Any

__all__ = ["HUB_NAME", "ITM_SNIPPET", "LIBRARIES", "MLM_SNIPPET", "adapt", "run"]

HUB_NAME = "BridgeTower/bridgetower-large-itm-mlm"
LIBRARIES = ("transformers", "bridgetower")

ITM_SNIPPET = """\
from transformers import BridgeTowerProcessor, BridgeTowerForImageAndTextRetrieval
import requests
from PIL import Image

url = "http://images.cocodataset.org/val2017/000000039769.jpg"
image = Image.open(requests.get(url, stream=True).raw)
texts = ["An image of two cats chilling on a couch", "A football player scoring a goal"]

processor = BridgeTowerProcessor.from_pretrained("BridgeTower/bridgetower-large-itm-mlm")
model = BridgeTowerForImageAndTextRetrieval.from_pretrained("BridgeTower/bridgetower-large-itm-mlm")

# forward pass
scores = dict()
for text in texts:
    # prepare inputs
    encoding = processor(image, text, return_tensors="pt")
    outputs = model(**encoding)
    scores[text] = outputs.logits[0,1].item()
"""
"""The model card's image-text matching snippet, verbatim."""

MLM_SNIPPET = """\
from transformers import BridgeTowerProcessor, BridgeTowerForMaskedLM
from PIL import Image
import requests

url = "http://images.cocodataset.org/val2017/000000360943.jpg"
image = Image.open(requests.get(url, stream=True).raw).convert("RGB")
text = "a <mask> looking out of the window"

processor = BridgeTowerProcessor.from_pretrained("BridgeTower/bridgetower-large-itm-mlm")
model = BridgeTowerForMaskedLM.from_pretrained("BridgeTower/bridgetower-large-itm-mlm")

# prepare inputs
encoding = processor(image, text, return_tensors="pt")

# forward pass
outputs = model(**encoding)

results = processor.decode(outputs.logits.argmax(dim=-1).squeeze(0).tolist())
print(results)
#.a cat looking out of the window.
"""
"""The model card's masked-language-modelling snippet, verbatim."""

_DOWNLOAD = "Image.open(requests.get(url, stream=True).raw)"
_LOCAL = "Image.open(image_file)"


def adapt(snippet: str, library: str = "transformers") -> str:
    """The runnable variant of ``snippet`` for ``library`` (see the module docstring).

    The code reads the names ``image_file`` (a path or file object of the image) and
    ``checkpoint`` (directory or Hub id) from its namespace.  Raises ``ValueError`` if the
    snippet does not have the expected import, download and checkpoint lines.
    """
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {LIBRARIES}, got {library!r}")
    lines = snippet.splitlines()
    if not lines or not lines[0].startswith("from transformers import "):
        raise ValueError("the snippet must start with its 'from transformers import ...' line")
    if library == "bridgetower":
        lines[0] = lines[0].replace("from transformers import ", "from bridgetower import ", 1)
    out = []
    downloads = hubs = 0
    for line in lines:
        if line == "import requests" or line.startswith("url = "):
            continue  # only used to download the image
        if _DOWNLOAD in line:
            line = line.replace(_DOWNLOAD, _LOCAL)
            downloads += 1
        hubs += line.count(f'"{HUB_NAME}"')
        out.append(line.replace(f'"{HUB_NAME}"', "checkpoint"))
    if downloads != 1 or hubs != 2:
        raise ValueError(
            f"expected one image download and two checkpoint names in the snippet, found {downloads} and {hubs}"
        )
    return "\n".join(out) + "\n"


def run(
    snippet: str, *, library: str, image_file: Any, checkpoint: str | os.PathLike
) -> tuple[dict[str, Any], str]:
    """Execute ``adapt(snippet, library)``; returns ``(namespace, printed output)``."""
    code = compile(adapt(snippet, library), f"<model card snippet, {library}>", "exec")
    namespace: dict[str, Any] = {
        "__name__": "__model_card__",
        "image_file": image_file,
        "checkpoint": os.fspath(checkpoint),
    }
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code, namespace)  # noqa: S102 - our own, fixed snippet text
    return namespace, printed.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Run the BridgeTower model card snippets on a checkpoint."
    )
    parser.add_argument("checkpoint", help="Hugging Face format checkpoint directory or Hub id")
    parser.add_argument("image", help="image file")
    parser.add_argument("--library", choices=LIBRARIES, default="bridgetower")
    args = parser.parse_args(argv)
    ns, _ = run(
        ITM_SNIPPET, library=args.library, image_file=args.image, checkpoint=args.checkpoint
    )
    for text, score in ns["scores"].items():
        print(f"{score:+.4f}  {text}")
    _, printed = run(
        MLM_SNIPPET, library=args.library, image_file=args.image, checkpoint=args.checkpoint
    )
    print(printed, end="")


if __name__ == "__main__":
    main()
