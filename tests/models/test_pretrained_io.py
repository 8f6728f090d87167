"""``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` with ``transformers``' keywords
(issue 13): dtype and device placement, Hub keywords (the Hub replaced by a local folder through
monkeypatched ``huggingface_hub`` functions: these machines have no network), sharded
checkpoints in both formats, tied weights, and the processor saved with every export."""

from __future__ import annotations

import json
import shutil

import huggingface_hub
import pytest
import torch
import transformers
from hf_reference import batch, hf_config, perturbed  # tests/models/hf_reference.py
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from bridgetower.models import (
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForMaskedLM,
    BridgeTowerProcessor,
    build_wordlevel_tokenizer,
    create_model,
)


@pytest.fixture(scope="module")
def itm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("itm")
    model = BridgeTowerForImageAndTextRetrieval.from_pretrained(
        perturbed(transformers.BridgeTowerForImageAndTextRetrieval, hf_config()))
    model.save_pretrained(path)
    return path


def _logits(model):
    with torch.random.fork_rng():
        torch.manual_seed(1)
        ids, mask, px = batch()  # the same inputs at every call
    with torch.no_grad():
        return model(ids.to(model.device), mask.to(model.device), px.to(model.device, model.dtype)).logits.float()


# ------------------------------------------------------------------ keywords


def test_transformers_keywords(itm_dir):
    ref = _logits(BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir))
    hub_only = {"revision": "main", "cache_dir": str(itm_dir), "local_files_only": True, "token": "t",
                "force_download": False}  # used for the Hub, ignored for a local directory
    model = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, dtype=torch.float64, **hub_only)
    assert model.dtype == torch.float64 and not model.training
    assert (_logits(model) - ref).abs().max() < 1e-5
    assert BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, torch_dtype="bfloat16").dtype == torch.bfloat16
    model.save_pretrained(itm_dir.parent / "double")
    assert BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir.parent / "double", dtype="auto").dtype == torch.float64
    for device_map in ("cpu", torch.device("cpu"), "auto" if not torch.cuda.is_available() else "cpu", {"": "cpu"}):
        assert BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, device_map=device_map).device.type == "cpu"
    assert BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, attn_backend="math").config.attn_backend == "math"
    eager = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, attn_implementation="eager")
    assert eager.config.attn_backend == "math" and (_logits(eager) - ref).abs().max() < 1e-5
    with pytest.raises(ValueError, match=r"takes \['eager', 'sdpa'\]"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, attn_implementation="flash_attention_2")
    with pytest.raises(ValueError, match="disagree"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, attn_implementation="sdpa", attn_backend="math")
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['low_cpu_mem_usage'\]. Valid: strict, .*revision"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, low_cpu_mem_usage=True)
    with pytest.raises(ValueError, match="one device"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, device_map={"a": "cpu", "b": "meta"})
    with pytest.raises(ValueError, match="dtype must be"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, dtype=torch.int64)
    with pytest.raises(ValueError, match="disagree"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, dtype="float32", torch_dtype="float16")
    same = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, dtype=torch.float32, torch_dtype="float32")
    assert same.dtype == torch.float32  # one dtype, two spellings
    with pytest.raises(ValueError, match="torch_dtype must be"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, torch_dtype="int8")
    # the forward defaults transformers keeps on its config
    configured = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, output_hidden_states=True, return_dict=False)
    assert configured.config.output_hidden_states and configured.config.return_dict is False
    with pytest.raises(TypeError, match="output_attentions must be True, False or None"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir, output_attentions="yes")


def test_a_local_looking_path_that_does_not_exist_fails_at_once(tmp_path, monkeypatch):
    def no_hub(*args, **kwargs):
        raise AssertionError("contacted the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in ("runs/typo", "./model", "/no/such/dir", "model.ckpt", "typo"):
        with pytest.raises(FileNotFoundError, match="no such file or directory"):
            BridgeTowerForImageAndTextRetrieval.from_pretrained(name)


# ------------------------------------------------------------------ shards and the Hub


@pytest.mark.parametrize("fmt", ["bridgetower", "hf"])
def test_sharded_checkpoints(fmt, itm_dir, tmp_path):
    model = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir)
    model.save_pretrained(tmp_path, format=fmt, max_shard_size="300KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(shards) > 2 and sorted(set(index["weight_map"].values())) == shards
    assert not (tmp_path / "model.safetensors").exists()
    again = BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path)
    assert torch.equal(_logits(again), _logits(model))
    if fmt == "hf":  # transformers reads the same shards
        hf = transformers.BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path).eval()
        assert (_logits(BridgeTowerForImageAndTextRetrieval.from_pretrained(hf)) - _logits(model)).abs().max() < 1e-6
    model.save_pretrained(tmp_path, format=fmt)  # one file again: the old shards go
    assert not list(tmp_path.glob("model-*.safetensors")) and not (tmp_path / "model.safetensors.index.json").exists()


class FakeHub:
    """``huggingface_hub.hf_hub_download`` over local folders ``{repo_id: folder}``, recording calls."""

    def __init__(self, repos):
        self.repos, self.calls = repos, []

    def __call__(self, repo_id, filename, **kwargs):
        self.calls.append((repo_id, filename, kwargs))
        path = self.repos[repo_id] / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)


@pytest.mark.parametrize("fmt", ["bridgetower", "hf"])
def test_sharded_checkpoints_from_the_hub(fmt, itm_dir, tmp_path, monkeypatch):
    model = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir)
    model.save_pretrained(tmp_path, format=fmt, max_shard_size="300KB")
    hub = FakeHub({"org/itm": tmp_path})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    keywords = {"revision": "v1", "token": "secret", "cache_dir": str(tmp_path / "cache"), "force_download": True}
    again = BridgeTowerForImageAndTextRetrieval.from_pretrained("org/itm", **keywords)
    assert torch.equal(_logits(again), _logits(model))
    fetched = [name for _, name, _ in hub.calls]
    assert fetched[:3] == ["config.json", "model.safetensors", "model.safetensors.index.json"]
    assert {n for n in fetched if n.startswith("model-")} == {p.name for p in tmp_path.glob("model-*.safetensors")}
    assert all(kw == {**keywords, "local_files_only": False} for _, _, kw in hub.calls)
    # the processor of the same repository (the tokenizer given: AutoTokenizer has its own downloader)
    processor = BridgeTowerProcessor.from_pretrained("org/itm", tokenizer=build_wordlevel_tokenizer(["a"]), revision="v1")
    assert processor.image_processor.size == 32 and processor.max_text_length == 38


def test_hub_offline_and_not_cached_is_a_clear_error(monkeypatch):
    def offline(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(OSError, match="cannot load config.json of 'org/none' from the Hugging Face Hub"):
        BridgeTowerForImageAndTextRetrieval.from_pretrained("org/none", local_files_only=True)


# ------------------------------------------------------------------ tied weights, upload


def test_tied_weights_save_and_load(tmp_path):
    hf = perturbed(transformers.BridgeTowerForMaskedLM, hf_config())
    model = BridgeTowerForMaskedLM.from_pretrained(hf)
    embeddings = model.bridgetower.text_model.word_embeddings.weight
    model.mlm_score.tie_weights(embeddings)
    ids, mask, px = batch()
    with torch.no_grad():
        want = model(ids, mask, px).logits
    for fmt in ("bridgetower", "hf"):
        model.save_pretrained(tmp_path / fmt, format=fmt)
        again = BridgeTowerForMaskedLM.from_pretrained(tmp_path / fmt)
        assert again.mlm_score.decoder.weight is again.bridgetower.text_model.word_embeddings.weight
        with torch.no_grad():
            assert torch.equal(again(ids, mask, px).logits, want)
    hf_again = transformers.BridgeTowerForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert hf_again.config.tie_word_embeddings
    with torch.no_grad():
        assert (hf_again(input_ids=ids, attention_mask=mask, pixel_values=px).logits - want).abs().max() < 1e-4


def test_push_to_hub_uploads_the_saved_directory(itm_dir, monkeypatch):
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        from pathlib import Path

        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)
        return "commit-info"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = BridgeTowerForImageAndTextRetrieval.from_pretrained(itm_dir)
    tokenizer = build_wordlevel_tokenizer(["a", "cube"])
    assert model.push_to_hub("me/itm", private=True, tokenizer=tokenizer, commit_message="first") == "commit-info"
    repo, files, kwargs = calls["upload"]
    assert calls["create"] == ("me/itm", {"private": True, "exist_ok": True}) and repo == "me/itm"
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= set(files)
    assert kwargs["commit_message"] == "first"
    model.save_pretrained(itm_dir.parent / "pushed", format="hf", push_to_hub=True, repo_id="me/itm-hf")
    assert calls["upload"][0] == "me/itm-hf" and "config.json" in calls["upload"][1]


# ------------------------------------------------------------------ the processor follows the model


def test_every_export_carries_its_processor(tmp_path):
    model = create_model("bridgetower-tiny", task="itm")  # 64-px images, 64 text positions
    tokenizer = build_wordlevel_tokenizer("a red blue cube sphere".split())
    for fmt in ("bridgetower", "hf"):
        model.save_pretrained(tmp_path / fmt, format=fmt, tokenizer=tokenizer)
        processor = BridgeTowerProcessor.from_pretrained(tmp_path / fmt)
        assert processor.image_processor.size == processor.image_processor.crop_size == 64
        assert processor.max_text_length == 64
        assert processor(text="a red cube")["input_ids"].tolist() == [[0, 5, 6, 8, 2]]
    hf_processor = transformers.BridgeTowerProcessor.from_pretrained(tmp_path / "hf")
    assert hf_processor.image_processor.size["shortest_edge"] == 64
    # without a tokenizer the directory is refused, never given an invented one
    model.save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="has no tokenizer files"):
        BridgeTowerProcessor.from_pretrained(tmp_path / "bare")
    assert BridgeTowerProcessor.from_pretrained(tmp_path / "bare", tokenizer=tokenizer).image_processor.size == 64
    # a model loaded from a directory passes its tokenizer on when saved again
    loaded = BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "bridgetower")
    loaded.save_pretrained(tmp_path / "again")
    assert BridgeTowerProcessor.from_pretrained(tmp_path / "again").tokenizer("a cube")["input_ids"] == [0, 5, 8, 2]
    # older directories without preprocessor_config.json: the image size of config.json
    shutil.copytree(tmp_path / "bridgetower", tmp_path / "old")
    (tmp_path / "old" / "preprocessor_config.json").unlink()
    assert BridgeTowerProcessor.from_pretrained(tmp_path / "old").image_processor.size == 64
