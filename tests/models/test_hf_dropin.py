"""Drop-in fidelity with ``transformers``' BridgeTower (issue 13), ported from its own tests
(``tests/models/bridgetower/test_modeling_bridgetower.py``: model-tester configurations, shapes
of every head, hidden states and attentions, losses with labels, save/load round trips,
batching equivalence, ``interpolate_pos_encoding``, training) and run against that library on
the same random-weight checkpoint.
"""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch
import transformers
from hf_reference import PAIRS, batch, hf_config, perturbed  # tests/models/hf_reference.py

from bridgetower.kernels.attention_backends import api as attention_api
from bridgetower.models import (
    TASK_MODELS,
    BridgeTowerForImageAndTextRetrieval,
    BridgeTowerForNLVR2,
    BridgeTowerModel,
    build_wordlevel_tokenizer,
    create_model,
)


def pair(task, config=None, **load):
    hf_cls, our_cls = PAIRS[task]
    hf = perturbed(hf_cls, config or hf_config())
    return hf, our_cls.from_pretrained(hf, **load)


def main_output(task, out):
    return out.pooler_output if task == "base" else out.logits


def close(a, b, atol=1e-4):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert (a - b).abs().max() < atol, (a - b).abs().max()


# ------------------------------------------------------------------ images


def test_image_size_not_a_multiple_of_the_patch_runs_as_in_transformers():
    hf, ours = pair("itm")
    ids, mask, _ = batch()
    px = torch.randn(3, 3, 40, 56)  # 2.5 x 3.5 patches: the patch convolution floors to 2 x 3
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px, interpolate_pos_encoding=True)
        got = ours(ids, mask, px)  # (we always interpolate; the keyword is accepted too)
    close(got.logits, ref.logits)
    close(ours(ids, mask, px, interpolate_pos_encoding=True).logits, ref.logits)
    # what the processor makes with a shortest edge and crop of 180 (resized to 160, centre-cropped
    # with padding to 180 x 180) runs too: 11 x 11 patches + CLS, as in transformers' own test
    from PIL import Image

    from bridgetower.models import BridgeTowerProcessor, build_wordlevel_tokenizer

    proc = BridgeTowerProcessor(tokenizer=build_wordlevel_tokenizer(["a", "cat"]))
    enc = proc(Image.new("RGB", (640, 480), (120, 30, 200)), "a cat", size={"shortest_edge": 180}, crop_size=180)
    assert enc["pixel_values"].shape == (1, 3, 180, 180)
    base = BridgeTowerModel.from_pretrained(hf.bridgetower)
    with torch.no_grad():
        out = base(enc["input_ids"], enc["attention_mask"], enc["pixel_values"], enc["pixel_mask"])
        ref = hf.bridgetower(**enc, interpolate_pos_encoding=True)
    assert out.image_features.shape == (1, 122, 64)
    close(out.image_features, ref.image_features)


def test_padded_batch_matches_transformers_unless_masking_is_asked_for(tmp_path):
    hf, ours = pair("itm")
    ids, mask, px = batch()
    pixel_mask = torch.ones(3, 32, 32, dtype=torch.long)
    pixel_mask[1, :, 16:] = 0  # image 1 is 32 x 16, padded to 32 x 32
    px[1, :, :, 16:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px, pixel_mask=pixel_mask).logits
        close(ours(ids, mask, px, pixel_mask).logits, ref)
        assert not ours.mask_image_padding  # the default for a transformers checkpoint
        masked = ours(ids, mask, px, pixel_mask, mask_image_padding=True).logits
        assert (masked[1] - ref[1]).abs().max() > 1e-4  # the option changes the padded image only
        close(masked[[0, 2]], ref[[0, 2]])
        # ours: the setting is saved with the model; before the option existed, it was on
        ours.set_image_padding_mask(True)
        ours.save_pretrained(tmp_path / "on")
        again = BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "on")
        assert again.mask_image_padding
        close(again(ids, mask, px, pixel_mask).logits, masked, atol=1e-6)
        assert not BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "on", mask_image_padding=False).mask_image_padding
        ours.set_image_padding_mask(False)
        ours.save_pretrained(tmp_path / "off")
        assert not BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "off").mask_image_padding
    import json

    meta = json.loads((tmp_path / "off" / "config.json").read_text())
    del meta["mask_image_padding"]
    (tmp_path / "off" / "config.json").write_text(json.dumps(meta))
    assert BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "off").mask_image_padding


def test_vision_share_layernorm_false_computes_what_transformers_computes():
    # transformers builds ln_separate for share_layernorm=False but normalises every fusion
    # input with ln_post; the perturbed ln_separate weights differ from ln_post
    hf, ours = pair("itm", hf_config(share_layernorm=False))
    ids, mask, px = batch()
    with torch.no_grad():
        close(ours(ids, mask, px).logits, hf(input_ids=ids, attention_mask=mask, pixel_values=px).logits)
    assert any("ln_separate" in k for k in ours.load_report.dropped)
    with pytest.raises(ValueError, match="ln_separate"):
        create_model("bridgetower-tiny", **{"vision.ln_separate": True}).save_pretrained("unused", format="hf")


# ------------------------------------------------------------------ forward options


@pytest.mark.parametrize("task", list(PAIRS))
def test_hidden_states_as_transformers_returns_them(task):
    hf, ours = pair(task)
    ids, mask, px = batch()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px, output_hidden_states=True).hidden_states
        out = ours(ids, mask, px, output_hidden_states=True)
    got = out.hidden_states
    text, image, cross = got
    # transformers' tester: text layers + 1, vision layers + 1, cross layers
    assert (len(text), len(image), len(cross)) == (4, 4, 2)
    assert image[0].shape == (5, 3, 64)  # sequence-first, as transformers returns them
    for mine, theirs in zip(text + image, ref[0] + ref[1], strict=True):
        close(mine, theirs)
    for (t, v), (rt, rv) in zip(cross, ref[2], strict=True):
        close(t, rt)
        close(v, rv)
    assert "hidden_states" in out.keys()
    assert "hidden_states" not in ours(ids, mask, px).keys()  # only when asked for


def _hf_cross_attention_probs(hf_model):
    """transformers computes but does not return the cross-attention probabilities: hook them."""
    captured = {}
    base = getattr(hf_model, "bridgetower", hf_model)
    hooks = []
    for stream in ("text", "image"):
        for i, layer in enumerate(getattr(base, f"cross_modal_{stream}_layers")):
            def hook(module, args, output, key=(stream, i)):
                captured[key] = output[1]
            hooks.append(layer.crossattention.self.register_forward_hook(hook))
    return captured, hooks


@pytest.mark.parametrize("task", list(PAIRS))
def test_attentions_as_transformers_returns_them_with_gradients(task):
    hf, ours = pair(task)
    ids, mask, px = batch()
    captured, hooks = _hf_cross_attention_probs(hf)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px, output_attentions=True).attentions
    for h in hooks:
        h.remove()
    out = ours(ids, mask, px, output_attentions=True)
    assert len(out.attentions) == len(out.cross_attentions) == 2
    for (t, v), (rt, rv) in zip(out.attentions, ref, strict=True):
        assert t.shape == (3, 4, 10, 10) and v.shape == (3, 4, 5, 5)
        close(t, rt, 1e-5)
        close(v, rv, 1e-5)
    for i, (t, v) in enumerate(out.cross_attentions):
        assert t.shape == (3, 4, 10, 5) and v.shape == (3, 4, 5, 10)
        close(t, captured["text", i], 1e-5)
        close(v, captured["image", i], 1e-5)
    # explanation methods need their gradients
    probs = out.attentions[0][0]
    probs.retain_grad()
    main_output(task, out).sum().backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0
    # the probabilities do not change the result
    with torch.no_grad():
        close(main_output(task, out), main_output(task, ours(ids, mask, px)), 1e-5)


def test_memory_efficient_backends_fall_back_for_attentions_and_say_so_once(caplog):
    hf, ours = pair("itm")
    ours.set_attention_backend("sdpa")
    ids, mask, px = batch()
    attention_api._log_probs_fallback.cache_clear()
    with caplog.at_level(logging.INFO, logger=attention_api.__name__), torch.no_grad():
        out = ours(ids, mask, px, output_attentions=True)
        ours(ids, mask, px, output_attentions=True)
        plain = ours(ids, mask, px)
    assert caplog.text.count("'sdpa' does not return attention probabilities") == 1
    close(out.attentions[1][1], hf(input_ids=ids, attention_mask=mask, pixel_values=px).attentions[1][1], 1e-5)
    close(out.logits, plain.logits, 1e-5)


def test_return_dict_token_type_ids_and_interpolate_pos_encoding_are_accepted():
    hf, ours = pair("itm")
    ids, mask, px = batch()
    labels = torch.tensor([1, 0, 1])
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), pixel_values=px,
                 labels=labels, return_dict=False)
        got = ours(ids, mask, px, token_type_ids=torch.zeros_like(ids), labels=labels, interpolate_pos_encoding=False,
                   return_dict=False)
    assert isinstance(got, tuple) and len(got) == 2  # (loss, logits): no hidden states unless asked for
    close(got[0], ref[0], 1e-5)
    close(got[1], ref[1])
    with pytest.raises(TypeError, match="unexpected forward keyword.*foo"):
        ours(ids, mask, px, foo=1)
    with pytest.raises(ValueError, match="inputs_embeds"):
        ours(ids, mask, px, inputs_embeds=torch.zeros(3, 10, 64))
    with pytest.raises(ValueError, match="token_type_ids"):
        ours(ids, mask, px, token_type_ids=torch.zeros(3, 4, dtype=torch.long))


def test_losses_with_labels_match_transformers():
    ids, mask, px = batch()
    labels = ids.masked_fill(mask == 0, -100)
    for task, kw_hf, kw_ours in (
        ("itm", {"labels": torch.tensor([1, 0, 1])}, {"labels": torch.tensor([1, 0, 1])}),
        ("mlm", {"labels": labels}, {"labels": labels}),
        ("contrastive", {"return_loss": True}, {"return_loss": True}),
    ):
        hf, ours = pair(task)
        with torch.no_grad():
            ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px, **kw_hf)
            got = ours(ids, mask, px, **kw_ours)
        close(got.loss, ref.loss, 1e-5)
        assert got[0] is got.loss and got["logits"] is got.logits and got.to_tuple()[0] is got.loss


def test_outputs_are_indexed_like_transformers_outputs():
    hf, ours = pair("itm")
    ids, mask, px = batch()
    with torch.no_grad():
        out = ours(ids, mask, px, labels=torch.tensor([1, 0, 1]))
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=px, labels=torch.tensor([1, 0, 1]))
        full = ours(ids, mask, px, labels=torch.tensor([1, 0, 1]), output_hidden_states=True, output_attentions=True)
    assert list(out.keys()) == ["loss", "logits"]
    # transformers 5 always returns hidden states and attentions; ours when asked for
    assert list(full.keys())[:4] == list(ref.keys()) == ["loss", "logits", "hidden_states", "attentions"]
    assert out.pooler_output.shape == (3, 128) and out.encoder_output.pooler_output.shape == (3, 128)
    assert "pooler_output" not in out.keys() and len(out.to_tuple()) == 2


def test_batching_equivalence():
    _, ours = pair("mlm")
    ids, mask, px = batch()
    with torch.no_grad():
        together = ours(ids, mask, px).logits
        alone = torch.cat([ours(ids[i : i + 1], mask[i : i + 1], px[i : i + 1]).logits for i in range(3)])
    close(together, alone, 1e-5)


@pytest.mark.parametrize("task", [t for t in TASK_MODELS if t != "base"])
def test_every_task_model_takes_the_transformers_forward_options(task):
    model = create_model("bridgetower-tiny", task=task, fusion={"num_layers": 2}).eval()
    ids, mask, px = batch(image=32, vocab=60)
    if task == "irtr":
        ids, mask = ids[:, None].expand(3, 2, 10), mask[:, None].expand(3, 2, 10)
    extra = {"pixel_values_2": px.flip(0)} if task == "nlvr2" else {}
    with torch.no_grad():
        plain = model(ids, mask, px, **extra)
        out = model(ids, mask, px, output_hidden_states=True, output_attentions=True,
                    token_type_ids=torch.zeros_like(ids) if task != "irtr" else None,
                    interpolate_pos_encoding=True, **extra)
        as_tuple = model(ids, mask, px, return_dict=False, **extra)
    first = plain.itm_logits if task == "pretraining" else plain.logits
    again = out.itm_logits if task == "pretraining" else out.logits
    close(again, first, 1e-5)
    assert isinstance(as_tuple, tuple)
    hidden, attentions = out.hidden_states, out.attentions
    if task == "nlvr2":  # one item per image
        hidden, attentions = hidden[0], attentions[0]
    assert len(hidden) == 3 and len(hidden[2]) == 2 and len(attentions) == 2


# ------------------------------------------------------------------ helpers and round trips


def test_model_helpers_match_transformers():
    hf, ours = pair("itm")
    h = 64
    # transformers also counts the text tower's pooler, which BridgeTower never uses
    assert ours.num_parameters() == hf.num_parameters() - (h * h + h)
    assert ours.num_parameters(only_trainable=True) == ours.num_parameters()
    embeddings = sum(m.weight.numel() for m in ours.modules() if isinstance(m, torch.nn.Embedding))
    assert ours.num_parameters(exclude_embeddings=True) == ours.num_parameters() - embeddings
    ids, mask, px = batch()
    plain = ours(ids, mask, px, labels=torch.tensor([1, 0, 1])).loss  # eval mode: no dropout
    ours.gradient_checkpointing_enable()
    assert ours.is_gradient_checkpointing
    checkpointed = ours(ids, mask, px, labels=torch.tensor([1, 0, 1])).loss
    close(checkpointed, plain, 1e-5)
    ours.gradient_checkpointing_disable()
    assert not ours.is_gradient_checkpointing
    # the text and vision sub-configs
    assert (ours.config.text.vocab_size, ours.config.vision.width) == (hf.config.text_config.vocab_size,
                                                                      hf.config.vision_config.hidden_size)


@pytest.mark.parametrize("task", list(PAIRS))
@pytest.mark.parametrize("fmt", ["bridgetower", "hf"])
def test_save_load_round_trip(task, fmt, tmp_path):
    hf, ours = pair(task)
    ids, mask, px = batch()
    ours.save_pretrained(tmp_path, format=fmt)
    again = type(ours).from_pretrained(tmp_path)
    with torch.no_grad():
        close(main_output(task, again(ids, mask, px)), main_output(task, ours(ids, mask, px)), 1e-5)
        if fmt == "hf":  # and transformers reads it
            loaded = type(hf).from_pretrained(tmp_path).eval()
            close(main_output(task, loaded(input_ids=ids, attention_mask=mask, pixel_values=px)),
                  main_output(task, hf(input_ids=ids, attention_mask=mask, pixel_values=px)), 1e-5)


@pytest.mark.parametrize("task", ["vqa", "snli-ve", "irtr"])
def test_downstream_models_export_the_encoder_for_transformers(task, tmp_path):
    hf = perturbed(transformers.BridgeTowerModel, hf_config())
    model = TASK_MODELS[task].from_pretrained(hf, strict=False, vqa_num_labels=7).eval()
    model.save_pretrained(tmp_path, format="hf")
    ids, mask, px = batch()
    with torch.no_grad():
        encoder = transformers.BridgeTowerModel.from_pretrained(tmp_path).eval()
        close(encoder(input_ids=ids, attention_mask=mask, pixel_values=px).pooler_output,
              hf(input_ids=ids, attention_mask=mask, pixel_values=px).pooler_output)
        again = TASK_MODELS[task].from_pretrained(tmp_path)
        if task == "irtr":
            ids, mask = ids[:, None].expand(3, 2, 10), mask[:, None].expand(3, 2, 10)
        close(again(ids, mask, px).logits, model(ids, mask, px).logits, 1e-5)
    assert again.config.vqa_num_labels == 7


def test_nlvr2_has_no_transformers_form(tmp_path):
    with pytest.raises(ValueError, match="NLVR2 uses 3"):
        BridgeTowerForNLVR2(create_model("bridgetower-tiny").config).save_pretrained(tmp_path, format="hf")


# ------------------------------------------------------------------ transformers.Trainer


def test_transformers_trainer_fine_tunes_an_itm_model(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task="itm", fusion={"num_layers": 2})
    ids, mask, px = batch(b=8, image=32, vocab=60)
    labels = torch.tensor([1, 0] * 4)
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "pixel_values": px[i], "labels": labels[i]}
            for i in range(8)]
    tensorboard = importlib.util.find_spec("tensorboard") is not None  # its callback logs model.config
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=1e-3, report_to=["tensorboard"] if tensorboard else [], use_cpu=True, save_strategy="no",
        logging_steps=1, disable_tqdm=True, dataloader_num_workers=0,
    )
    # a tokenizer as processing_class: the Trainer aligns its special tokens with model.config.get_text_config()
    tokenizer = build_wordlevel_tokenizer(["a", "cube"])
    trainer = transformers.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows,
                                   processing_class=tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = trainer.train()
    assert result.global_step == 3 and torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("itm_score") for n in changed) and any(n.startswith("bridgetower.fusion") for n in changed)
    metrics = trainer.evaluate()
    model.eval()
    with torch.no_grad():
        want = torch.stack([model(ids[i : i + 4], mask[i : i + 4], px[i : i + 4], labels=labels[i : i + 4]).loss
                            for i in (0, 4)]).mean()
        logits = model(ids, mask, px).logits
    assert abs(metrics["eval_loss"] - want.item()) < 1e-5
    predictions = trainer.predict(rows).predictions  # the logits alone, as for a transformers model
    assert predictions.shape == (8, 2) and torch.allclose(torch.from_numpy(predictions), logits, atol=1e-5)


def test_transformers_trainer_checkpointing_saves_and_resumes(tmp_path):
    # activation checkpointing as the Trainer turns it on; its checkpoints (the weights alone: our
    # models are not transformers PreTrainedModels) load with from_pretrained(dir, config=...)
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate")
    torch.manual_seed(0)
    model = create_model("bridgetower-tiny", task="itm", fusion={"num_layers": 2})
    ids, mask, px = batch(b=4, image=32, vocab=60)
    rows = [{"input_ids": ids[i], "attention_mask": mask[i], "pixel_values": px[i], "labels": torch.tensor(i % 2)}
            for i in range(4)]
    args = dict(per_device_train_batch_size=2, learning_rate=1e-3, report_to=[], use_cpu=True, disable_tqdm=True,
                save_strategy="steps", save_steps=2, activation_checkpointing=True)
    trainer = transformers.Trainer(model=model, train_dataset=rows,
                                   args=transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, **args))
    trainer.train()
    assert model.is_activation_checkpointing
    model.eval()
    with torch.no_grad():
        want = model(ids, mask, px).logits
    saved = BridgeTowerForImageAndTextRetrieval.from_pretrained(tmp_path / "checkpoint-2", config=model.config)
    with torch.no_grad():
        close(saved(ids, mask, px).logits, want, 1e-6)
    trainer.save_model(str(tmp_path / "final"))
    base = BridgeTowerModel.from_pretrained(tmp_path / "final", config=model.config)  # the encoder of the task model
    with torch.no_grad():
        close(base(ids, mask, px).pooler_output, model.bridgetower(ids, mask, px).pooler_output, 1e-6)
    with pytest.raises(FileNotFoundError, match="must be a checkpoint directory"):
        BridgeTowerModel.from_pretrained(tmp_path / "nothing", config=model.config)
    with pytest.raises(TypeError, match="config must be"):
        BridgeTowerModel.from_pretrained(tmp_path / "final", config={"hidden_size": 8})
    # resuming from the Trainer's checkpoint continues where it stopped
    again = transformers.Trainer(model=create_model("bridgetower-tiny", task="itm", fusion={"num_layers": 2}),
                                 train_dataset=rows,
                                 args=transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, **args))
    assert again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2")).global_step == 3
    with pytest.raises(ValueError, match="every_n_layers=2"):
        model.activation_checkpointing_enable(every_n_layers=2)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        model.gradient_checkpointing_enable({"use_reentrant": True})
    model.gradient_checkpointing_enable({"use_reentrant": False})
    model.activation_checkpointing_disable()
    assert not model.is_gradient_checkpointing
