"""Import smoke test of an installed wheel: run by .ci/run in a fresh virtualenv holding only
the wheel and its core dependencies, from a directory outside the repository."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import bridgetower

site = Path(bridgetower.__file__).resolve().parent
assert "site-packages" in site.parts, f"bridgetower imported from {site}, not the installed wheel"
assert importlib.metadata.version("bridgetower") == bridgetower.__version__
assert "torch" not in sys.modules, "import bridgetower loaded torch"
assert (site / "py.typed").is_file(), "py.typed is not installed"
dist = importlib.metadata.distribution("bridgetower")
assert any(f.name == "LICENSE" for f in dist.files), "the wheel carries no LICENSE"
assert dist.metadata["License-Expression"] == "MIT", dist.metadata["License-Expression"]

out = subprocess.run([str(Path(sys.executable).with_name("bridgetower")), "--version"],
                     capture_output=True, text=True, check=True)
assert out.stdout.strip() == f"bridgetower {bridgetower.__version__}", out.stdout

import torch  # noqa: E402

import bridgetower.models  # noqa: E402

heavy = [m for m in ("triton", "torch._inductor", "pyarrow", "matplotlib", "wandb") if m in sys.modules]
assert not heavy, f"import bridgetower.models loaded {heavy}"
assert "bridgetower-tiny" in bridgetower.list_models()  # the config JSON files are shipped

model = bridgetower.create_model("bridgetower-tiny", task="itm").eval()
size = model.config.vision.image_size
with torch.no_grad():
    vocab = model.config.text.vocab_size
    out = model(input_ids=torch.randint(5, vocab, (2, 7)), attention_mask=torch.ones(2, 7, dtype=torch.long),
                pixel_values=torch.randn(2, 3, size, size))
assert out.logits.shape == (2, 2) and torch.isfinite(out.logits).all(), out.logits

# an optional package that the core install lacks: the error names the extra
from bridgetower.data.arrow_io import require_pyarrow  # noqa: E402

try:
    require_pyarrow()
except ImportError as e:
    assert "pip install 'bridgetower[arrow]'" in str(e), e
else:
    raise AssertionError("pyarrow is installed by the core install")

print(f"smoke test passed: bridgetower {bridgetower.__version__}, torch {torch.__version__}, "
      f"ITM logits {tuple(out.logits.shape)}")
