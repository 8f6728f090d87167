"""Packaging: optional dependencies fail naming their extra, the declared dependencies cover
what the code imports, a lean import, one version, the files a published package carries."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bridgetower
from bridgetower._optional import EXTRAS, MissingOptionalDependency, require

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bridgetower"

# import name -> distribution, where they differ
DISTRIBUTION = {"PIL": "pillow", "open_clip": "open_clip_torch", "yaml": "pyyaml", "faiss": "faiss-cpu"}
# imported by the package but deliberately not declared: torch's CUDA wheels bring the Triton
# they were built with, and every Triton path has a PyTorch fallback
UNDECLARED = {"triton"}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _floors(requirements: list[str]) -> dict[str, str]:
    out = {}
    for r in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.a-z]*)", r.split(";")[0].strip())
        assert m, f"{r!r}: every dependency has a plain >= floor"
        out[_name(m.group(1))] = m.group(2)
    return out


# ----------------------------------------------------------------------------- require()


def test_require_returns_the_module():
    import json

    assert require("json", "arrow", needed_for="x") is json


def test_require_names_the_extra_and_the_package(monkeypatch):
    for name in ("pyarrow", "pyarrow.ipc"):  # makes `import pyarrow.ipc` fail, even after an earlier import
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingOptionalDependency) as e:
        require("pyarrow.ipc", "arrow", needed_for="reading tables", hint="use the JSONL index")
    msg = str(e.value)
    assert msg.startswith("reading tables needs the 'pyarrow' package, which is not installed")
    assert "pip install 'bridgetower[arrow]'" in msg and "pip install pyarrow" in msg
    assert msg.endswith("or use the JSONL index") and e.value.name == "pyarrow.ipc"
    assert isinstance(e.value, ImportError)


def test_require_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown extra 'plots'; valid: \['arrow', 'augment', 'plot'"):
        require("json", "plots", needed_for="x")
    with pytest.raises(TypeError, match="error must be an ImportError subclass, got <class 'ValueError'>"):
        require("json", "plot", needed_for="x", error=ValueError)


class _Custom(ImportError):
    pass


def test_require_raises_the_given_error_class(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(_Custom, match=r"bridgetower\[tracking\]"):
        require("wandb", "tracking", needed_for="x", error=_Custom)


# ------------------------------------------------------------- every optional import site


def _arrow(tmp_path):
    from bridgetower.data.arrow_io import require_pyarrow

    require_pyarrow()


def _braceexpand(tmp_path):
    from bridgetower.data import expand_urls

    expand_urls("shard-{0..1}.tar")


def _webdataset(tmp_path):
    # local shards are read without the library; remote ones go through webdataset.gopen
    from bridgetower.data.shards import open_shard

    open_shard("pipe:cat shard.tar")


def _plot(tmp_path):
    from bridgetower.training import plot_metrics

    plot_metrics([{"split": "train", "step": 1, "loss": 1.0}], tmp_path / "curves.png")


def _tracking(tmp_path):
    from bridgetower.training.tracking import create_trackers

    create_trackers("wandb", tmp_path)


def _augment(tmp_path):
    from bridgetower.data.transforms import AugmentedImageTransform

    AugmentedImageTransform(32, "randaug")


def _search(tmp_path):
    from bridgetower.search import build_faiss_index

    build_faiss_index(__import__("numpy").ones((2, 4), dtype="float32"))


def _xformers(tmp_path):
    from bridgetower.kernels.attention_backends import xformers

    xformers._xformers_import_problem.cache_clear()
    try:
        problem = xformers._xformers_import_problem()
    finally:
        xformers._xformers_import_problem.cache_clear()
    raise ImportError(problem)  # the backend reports a reason instead of raising


SITES = [  # (missing module, extra, what uses it)
    ("pyarrow", "arrow", _arrow),
    ("braceexpand", "webdataset", _braceexpand),
    ("webdataset", "webdataset", _webdataset),
    ("matplotlib", "plot", _plot),
    ("wandb", "tracking", _tracking),
    ("xformers", "xformers", _xformers),
    ("faiss", "search", _search),
    ("torchvision", "augment", _augment),
]


@pytest.mark.parametrize("module, extra, use", SITES, ids=[s[0] for s in SITES])
def test_a_missing_optional_package_names_its_extra(module, extra, use, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    for name in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError) as e:
        use(tmp_path)
    assert f"needs the '{module}' package, which is not installed" in str(e.value)
    assert f"pip install 'bridgetower[{extra}]'" in str(e.value)
    assert module in EXTRAS[extra]


def test_every_optional_package_has_an_import_site():
    """Each package of EXTRAS is imported through require() somewhere in the package."""
    calls = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
                    and len(node.args) >= 2 and all(isinstance(a, ast.Constant) for a in node.args[:2])):
                calls.add((node.args[0].value.split(".")[0], node.args[1].value))
    declared = {(pkg, extra) for extra, pkgs in EXTRAS.items() for pkg in pkgs}
    tracker_packages = {("wandb", "tracking"), ("tensorboard", "tracking")}  # via tracking._require
    assert declared - calls <= tracker_packages, declared - calls
    assert calls <= declared, calls - declared


# ------------------------------------------------------------------ declared dependencies


def test_extras_in_pyproject_agree_with_the_optional_table():
    extras = _pyproject()["project"]["optional-dependencies"]
    for extra, packages in EXTRAS.items():
        assert sorted(_name(r) for r in extras[extra]) == sorted(DISTRIBUTION.get(p, p).replace("_", "-") for p in packages), extra
    parts = re.fullmatch(r"bridgetower\[(.*)\]", extras["all"][0]).group(1).split(",")
    assert len(extras["all"]) == 1 and sorted(parts) == sorted(set(extras) - {"all"})


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module imported -> the files importing it (absolute imports only)."""
    out: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "bridgetower":
                    out.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return out


def test_core_dependencies_cover_what_the_code_imports():
    project = _pyproject()["project"]
    core = {_name(r) for r in project["dependencies"]}
    optional = {DISTRIBUTION.get(p, p).replace("_", "-") for pkgs in EXTRAS.values() for p in pkgs}
    imported = _third_party_imports()
    for module, files in imported.items():
        dist = DISTRIBUTION.get(module, module).lower().replace("_", "-")
        if module in UNDECLARED:
            continue
        assert dist in core | optional, f"{module} (imported by {sorted(files)}) is not declared"
    assert "triton" not in core  # torch's CUDA wheels bring it; the CPU wheels need none
    assert core <= {DISTRIBUTION.get(m, m).lower().replace("_", "-") for m in imported}, "a core dependency nothing imports"


def test_optional_packages_are_never_imported_at_module_level():
    optional = {p for pkgs in EXTRAS.values() for p in pkgs} | UNDECLARED
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text(), str(path)).body:  # module-level statements only
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad = [n for n in names if n.split(".")[0] in optional]
            if bad and path.name != "bridge_norm_triton.py":  # loaded on the first Triton call
                pytest.fail(f"{path.relative_to(ROOT)} imports {bad} at module level")


def test_imports_load_no_optional_package_and_no_compiler():
    """``import`` of every subpackage loads none of the optional packages, no Triton and no
    ``torch._inductor`` (they load on first use)."""
    code = (
        "import sys\n"
        "import bridgetower.models, bridgetower.data, bridgetower.training, bridgetower.cli\n"
        f"heavy = {sorted({p for pkgs in EXTRAS.values() for p in pkgs} | {'triton', 'torch._inductor', 'open_clip'})}\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------- version and files


def test_one_source_for_the_version():
    from packaging.version import Version

    project = _pyproject()
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bridgetower.__version__"}
    Version(bridgetower.__version__)  # PEP 440
    try:
        installed = importlib.metadata.version("bridgetower")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("bridgetower is not installed")
    assert installed == bridgetower.__version__, "reinstall: `make install`"


def test_license_and_typing_marker_are_shipped():
    project = _pyproject()
    assert project["project"]["license"] == "MIT" and project["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "the bridgetower authors" in text
    assert (PACKAGE / "py.typed").is_file()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["bridgetower"]


def test_changelog_has_the_unreleased_and_the_last_release():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings[0] == "Unreleased" and "0.1.0" in headings


def test_the_floors_are_recorded_in_the_docs():
    floors = _floors(_pyproject()["project"]["dependencies"])
    install = (ROOT / "docs" / "install.md").read_text()
    for dist in ("torch", "transformers", "open-clip-torch"):
        assert re.search(rf"`{dist.replace('-', '[-_]')}` *\| *{re.escape(floors[dist])} ", install), dist
