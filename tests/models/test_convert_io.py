"""Checkpoint file reading (validated safetensors) and the one weight copy with adaptation."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from bridgetower.models import create_model
from bridgetower.models.convert import (
    adapt_tensor,
    copy_weights,
    read_safetensors_lazy,
    read_state_dict,
)
from bridgetower.models.towers.vision import resize_pos_embed


def _write(path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_reads_what_safetensors_writes(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).to(torch.bfloat16)}
    save_file(tensors, str(tmp_path / "w.safetensors"))
    lazy = read_safetensors_lazy(tmp_path / "w.safetensors")
    for k, v in tensors.items():
        assert torch.equal(lazy[k].load(), v)
    eager = read_state_dict(tmp_path / "w.safetensors")
    assert all(torch.equal(eager[k], v) for k, v in tensors.items())


@pytest.mark.parametrize(
    "header, data, problem",
    [
        # offsets pointing outside the data area
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, bytes(8), "outside the data area"),
        # two tensors on the same bytes
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "overlap or gap"),
        # byte count disagreeing with shape x dtype
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "need 12"),
        ({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unsupported dtype"),
        ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), "lacks"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "cover 8 of 12"),
        ([1, 2], b"", "not a JSON object"),
    ],
)
def test_bad_safetensors_headers_are_refused_naming_the_file(tmp_path, header, data, problem):
    f = tmp_path / "bad.safetensors"
    _write(f, header, data)
    with pytest.raises(ValueError, match=problem) as err:
        read_safetensors_lazy(f)
    assert str(f) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x01\x02\x03", b"\xff" * 8 + b"{}", struct.pack("<Q", 10) + b"not json!!"])
def test_truncated_or_garbage_files(tmp_path, content):
    f = tmp_path / "x.safetensors"
    f.write_bytes(content)
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        read_safetensors_lazy(f)


def test_copy_weights_copies_and_adapts_exactly_three_kinds():
    src = create_model("bridgetower-tiny")
    dst = create_model("bridgetower-tiny", **{"text.vocab_size": 70, "vision.image_size": 96},
                       fusion={"num_token_types": 3})
    before_new_rows = dst.text_model.word_embeddings.weight[64:].clone()
    report = copy_weights(dst, src.state_dict(), what="encoder")
    assert len(report.extended) == 2 and len(report.resized) == 1
    sd, dd = src.state_dict(), dst.state_dict()
    for key in report.copied:
        assert torch.equal(dd[key], sd[key]), key
    words = "text_model.model.embeddings.word_embeddings.weight"
    assert torch.equal(dd[words][:64], sd[words]) and torch.equal(dd[words][64:], before_new_rows)
    tt = dd["token_type_embeddings.weight"]
    assert torch.equal(tt[:2], sd["token_type_embeddings.weight"]) and torch.equal(tt[2], tt[1])
    pos = "vision_model.visual.positional_embedding"
    assert torch.equal(dd[pos], resize_pos_embed(sd[pos], (6, 6)))


def test_copy_weights_refuses_other_differences():
    src = create_model("bridgetower-tiny")
    other = create_model("bridgetower-tiny", fusion={"intermediate_size": 256})
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="shape mismatches"):
        copy_weights(other, src.state_dict(), what="encoder")
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # nothing copied
    sd = dict(src.state_dict())
    sd.pop("cross_modal_text_transform.weight")
    with pytest.raises(ValueError, match="the encoder of the source does not match: missing"):
        copy_weights(src, sd, what="encoder")


def test_adapt_tensor_none_for_unrelated_keys():
    assert adapt_tensor("fc.weight", torch.zeros(2, 3), nn.Linear(3, 4).weight) is None
