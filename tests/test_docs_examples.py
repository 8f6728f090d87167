"""Every ```python block of README.md and docs/*.md runs as written, on its own.

Each block is executed in a child process of its own, in a fresh temporary working directory,
with a time limit, ``OMP_NUM_THREADS=1`` and ``HF_HUB_OFFLINE=1``.  To keep the whole run short
the children are forked from one runner process that has already imported the heavy libraries
(torch, transformers, open_clip, bridgetower); each block still starts from an empty namespace,
so a block that forgets an import fails as it would when pasted into a new interpreter.

The files the docs refer to are prepared once and linked into every working directory:

* ``runs/demo/``: the output of ``make demo`` (``bridgetower pretrain``), made here by the same
  command with 2 steps (the same layout: ``model/`` with the tokenizer, ``checkpoints/``,
  ``metrics.jsonl`` ...; the weights are barely trained);
* ``scene.png``: a synthetic scene, ``bridgetower.data.make_scene(seed=2_000_003, index=3)``;
* ``tests/data/official/``: the official tiny checkpoint and reference data of this repository.

A block is skipped only when the line before its fence is ``<!-- not run: REASON -->``; each
such block is reported as a skipped test with that reason (``pytest -rs``), and
``test_skipped_blocks_are_few`` keeps them rare.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK_TIMEOUT_S = 120
MAX_SKIPPED = 6
PRELOAD = ("numpy", "PIL.Image", "torch", "transformers", "open_clip", "safetensors.torch",
           "bridgetower", "bridgetower.kernels", "bridgetower.layers", "bridgetower.models",
           "bridgetower.data", "bridgetower.training", "bridgetower.cli")
SKIP_MARK = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
FENCE = re.compile(r"^```python\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip_reason: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            start = i
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise AssertionError(f"{path.name}:{start + 1}: unterminated ```python block")
            prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
            mark = SKIP_MARK.search(prev)
            blocks.append(Block(path, start + 1, "\n".join(lines[start + 1 : j]) + "\n", mark and mark.group(1)))
            i = j
        i += 1
    return blocks


BLOCKS = [b for p in DOC_FILES for b in extract_blocks(p)]


# ----------------------------------------------------------------- the runner process

RUNNER = r'''
import importlib, json, os, signal, sys, time, traceback
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:  # the block that needs it reports the error
        pass
out = sys.stdout
sys.stdout = sys.stderr  # the protocol owns the real stdout
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the child: run one block
        os.setpgid(0, 0)
        os.chdir(req["cwd"])
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0); os.dup2(log, 1); os.dup2(log, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.argv = [req["name"]]
        status = 0
        try:
            exec(compile(req["code"], req["name"], "exec"), {"__name__": "__main__", "__file__": req["name"]})
        except SystemExit as e:
            status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            status = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(status)
    deadline, timed_out = time.monotonic() + req["timeout"], False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.02)
    try:  # whatever the block started in its process group goes too
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    rc = os.waitstatus_to_exitcode(status)
    out.write(json.dumps({"rc": rc, "timed_out": timed_out}) + "\n")
    out.flush()
'''


class Runner:
    def __init__(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", MPLBACKEND="Agg",
                   TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
        env.pop("TRITON_INTERPRET", None)
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, json.dumps(PRELOAD)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())

    def run(self, code: str, cwd: Path, name: str, timeout: float = BLOCK_TIMEOUT_S) -> tuple[int, bool, str]:
        log = cwd / ".block-output.txt"
        req = {"code": code, "cwd": str(cwd), "log": str(log), "name": name, "timeout": timeout}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("the docs-example runner process died")
        result = json.loads(reply)
        return result["rc"], result["timed_out"], log.read_text(errors="replace") if log.exists() else ""

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.kill()  # no need to wait for the interpreter's shutdown
        self.proc.wait(timeout=30)


PREPARE = """
from bridgetower.cli import main
from bridgetower.data import make_scene

make_scene(seed=2_000_003, index=3)[0].save("scene.png")
status = main(["pretrain", "--steps", "2", "--batch-size", "4", "--eval-size", "2", "--warmup", "1",
               "--output-dir", "runs/demo"])
assert status == 0, status
"""


@pytest.fixture(scope="module")
def runner():
    r = Runner()
    yield r
    r.close()


@pytest.fixture(scope="module")
def prepared(runner, tmp_path_factory) -> Path:
    """The files the docs refer to (see the module docstring), made once."""
    root = tmp_path_factory.mktemp("docs-files")
    rc, timed_out, output = runner.run(PREPARE, root, "prepare-docs-files", timeout=300)
    assert rc == 0 and not timed_out, f"preparing runs/demo and scene.png failed:\n{output[-4000:]}"
    return root


def _workdir(prepared: Path) -> Path:
    cwd = Path(tempfile.mkdtemp(prefix="block-", dir=prepared.parent))
    (cwd / "runs").mkdir()
    (cwd / "runs" / "demo").symlink_to(prepared / "runs" / "demo", target_is_directory=True)
    (cwd / "scene.png").symlink_to(prepared / "scene.png")
    (cwd / "tests" / "data").mkdir(parents=True)
    (cwd / "tests" / "data" / "official").symlink_to(ROOT / "tests" / "data" / "official", target_is_directory=True)
    return cwd


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.name)
def test_block_runs(block: Block, runner: Runner, prepared: Path) -> None:
    if block.skip_reason:
        pytest.skip(f"marked in the doc: {block.skip_reason}")
    rc, timed_out, output = runner.run(block.code, _workdir(prepared), block.name)
    assert not timed_out, f"{block.name}: still running after {BLOCK_TIMEOUT_S} s\n{output[-4000:]}"
    assert rc == 0, f"{block.name} failed (exit status {rc}):\n{block.code}\n--- output ---\n{output[-6000:]}"


def test_skipped_blocks_are_few() -> None:
    skipped = [f"{b.name}: {b.skip_reason}" for b in BLOCKS if b.skip_reason]
    assert len(skipped) <= MAX_SKIPPED, "too many blocks marked 'not run':\n" + "\n".join(skipped)
    assert len(BLOCKS) - len(skipped) >= 20, f"only {len(BLOCKS) - len(skipped)} blocks run"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of a Markdown file."""
    anchors, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("#") and not in_code:
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_links_point_into_the_repository() -> None:
    """Every relative link of README.md and docs/*.md names a file (and heading) that exists."""
    assert any(b.path.name == "README.md" for b in BLOCKS)
    broken = []
    for path in DOC_FILES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            file = (path.parent / target) if target else path
            if not file.exists():
                broken.append(f"{path.relative_to(ROOT)} -> {target}")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{path.relative_to(ROOT)} -> {target}#{anchor}")
    assert not broken, broken


def test_readme_stays_short() -> None:
    """The README is an overview (about 15 KB at most); details belong in docs/."""
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 16_000, f"README.md is {size} bytes; move details to a page of docs/"
