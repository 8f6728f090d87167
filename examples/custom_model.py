"""A vision-language model of your own, built from bridgetower's layers and trained on the demo data.

What it shows (docs/custom-models.md walks through it):

* any open_clip ViT as the vision tower -- here a small one built from scratch (GELU, 4 heads, not
  the published ViT-B/16), its top layers read with ``forward_intermediates``;
* any ``transformers`` encoder as the text tower -- here ELECTRA built from its config (not
  the published RoBERTa), its top layers read from ``hidden_states``;
* the cross-modal part composed from ``bridgetower.layers``: ``CoAttentionLayer`` stacks with
  a *different bridge between each pair of layers* (``create_bridge``), a ``Pooler`` per
  stream, and the ``ITMHead`` / ``MLMHead`` heads with their losses;
* a plain training loop on the synthetic scenes of ``make demo`` (``bridgetower.data``), then
  the held-out image-text matching accuracy on scenes of another seed.

Run ``python examples/custom_model.py`` (600 steps, about 7 minutes on one CPU thread) or
``python examples/custom_model.py --size tiny --steps 30`` for a smoke run.  Everything is built
from random weights; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import torch
from open_clip.transformer import VisionTransformer
from torch import nn
from transformers import ElectraConfig, ElectraModel

from bridgetower.data import (
    ImageTransform,
    PretrainingCollator,
    SceneITMEvalDataset,
    SyntheticSceneDataset,
    build_scene_tokenizer,
    scene_attribute_token_ids,
)
from bridgetower.layers import (
    CoAttentionLayer,
    ITMHead,
    MLMHead,
    Pooler,
    create_bridge,
    itm_loss,
    mlm_loss,
)


@dataclass(frozen=True)
class Sizes:
    vision_width: int
    text_width: int
    dim: int  # width of the cross-modal part
    heads: int
    batch: int


SIZES = {
    "tiny": Sizes(vision_width=32, text_width=32, dim=32, heads=2, batch=8),
    "small": Sizes(vision_width=128, text_width=128, dim=128, heads=4, batch=32),
}
# one bridge per pair of consecutive cross-modal layers: 3 bridges, 4 cross layers per stream
BRIDGES = ("scaled_add", "interpolate_tensor", "gated_interpolate")
IMAGE_SIZE = 64


class SceneVLModel(nn.Module):
    """Two towers, four bridged co-attention layers per stream, ITM and MLM heads."""

    def __init__(self, vocab_size: int, pad_token_id: int, sizes: Sizes, bridges=BRIDGES) -> None:
        super().__init__()
        n = len(bridges) + 1  # cross-modal layers; each reads one of the towers' top n layers
        self.vision = VisionTransformer(image_size=IMAGE_SIZE, patch_size=16, width=sizes.vision_width,
                                        layers=n, heads=sizes.heads, mlp_ratio=4.0, output_dim=sizes.dim)
        self.text = ElectraModel(ElectraConfig(
            vocab_size=vocab_size, embedding_size=sizes.text_width // 2, hidden_size=sizes.text_width,
            num_hidden_layers=n, num_attention_heads=sizes.heads, intermediate_size=4 * sizes.text_width,
            max_position_embeddings=64, pad_token_id=pad_token_id))
        d = sizes.dim
        self.text_proj, self.image_proj = nn.Linear(sizes.text_width, d), nn.Linear(sizes.vision_width, d)
        self.modality = nn.Embedding(2, d)  # token type: 0 text, 1 image
        self.text_norm, self.image_norm = nn.LayerNorm(d), nn.LayerNorm(d)  # the first layer's input
        self.text_layers = nn.ModuleList(CoAttentionLayer(d, sizes.heads, eps=1e-5) for _ in range(n))
        self.image_layers = nn.ModuleList(CoAttentionLayer(d, sizes.heads, eps=1e-5) for _ in range(n))
        self.text_bridges = nn.ModuleList(create_bridge(b, d) for b in bridges)
        self.image_bridges = nn.ModuleList(create_bridge(b, d) for b in bridges)
        self.text_pool, self.image_pool = Pooler(d), Pooler(d)
        self.itm, self.mlm = ITMHead(d), MLMHead(d, vocab_size)

    def encode_image(self, pixel_values):
        """The top n vision layers after ln_post, projected: n tensors (B, 1 + P, dim)."""
        out = self.vision.forward_intermediates(pixel_values, indices=len(self.image_layers),
                                                normalize_intermediates=True, intermediates_only=True,
                                                output_fmt="NLC", output_extra_tokens=True)
        layers = zip(out["image_intermediates_prefix"], out["image_intermediates"], strict=True)
        return [self.image_proj(torch.cat(pair, dim=1)) + self.modality.weight[1] for pair in layers]

    def encode_text(self, input_ids, attention_mask):
        """The top n text layers, projected: n tensors (B, L, dim)."""
        hidden = self.text(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        return [self.text_proj(h) + self.modality.weight[0] for h in hidden[-len(self.text_layers):]]

    def fuse(self, texts, images, text_mask):
        """BridgeTower's fusion: layer l of each stream reads the other stream's bridged input."""
        x, y = self.text_norm(texts[0]), self.image_norm(images[0])  # the first layers' inputs
        for i, (text_layer, image_layer) in enumerate(zip(self.text_layers, self.image_layers, strict=True)):
            if i > 0:  # bridge tower layer i into the previous cross-modal outputs x, y
                x, y = self.text_bridges[i - 1](texts[i], x), self.image_bridges[i - 1](images[i], y)
            x, y = text_layer(x, y, text_mask, None), image_layer(y, x, None, text_mask)
        pooled = torch.cat([self.text_pool(x), self.image_pool(y)], dim=-1)  # (B, 2 dim)
        return x, pooled


def pretraining_loss(model: SceneVLModel, batch) -> tuple[torch.Tensor, dict[str, float]]:
    """MLM on the masked captions with their own images + ITM on half-mismatched pairs."""
    images = model.encode_image(batch["pixel_values"])  # the vision tower runs once per batch
    text_mask = batch["attention_mask"]
    text_features, _ = model.fuse(model.encode_text(batch["mlm_input_ids"], text_mask), images, text_mask)
    loss_mlm = mlm_loss(model.mlm(text_features), batch["mlm_labels"])
    wrong = batch["itm_image_index"]  # row i: the image paired with text i (a wrong one for label 0)
    _, pooled = model.fuse(model.encode_text(batch["input_ids"], text_mask), [v[wrong] for v in images], text_mask)
    loss_itm = itm_loss(model.itm(pooled), batch["itm_labels"])
    return loss_mlm + loss_itm, {"mlm": loss_mlm.item(), "itm": loss_itm.item()}


@torch.no_grad()
def itm_accuracy(model: SceneVLModel, collator, tokenizer, transform, negatives: str, size: int) -> float:
    """Held-out ITM accuracy: half matching pairs, half with a `negatives`-kind wrong caption."""
    model.eval()
    data = SceneITMEvalDataset(size, negatives=negatives, seed=1_000_003, transform=transform, tokenizer=tokenizer)
    correct = 0
    for start in range(0, size, 64):
        batch = collator.collate([data[i] for i in range(start, min(start + 64, size))])
        texts = model.encode_text(batch["input_ids"], batch["attention_mask"])
        _, pooled = model.fuse(texts, model.encode_image(batch["pixel_values"]), batch["attention_mask"])
        correct += int((model.itm(pooled).argmax(-1) == batch["labels"]).sum())
    model.train()
    return correct / size


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="model and batch size")
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-size", type=int, default=256, help="held-out pairs per measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    sizes = SIZES[args.size]
    tokenizer = build_scene_tokenizer()
    transform = ImageTransform(IMAGE_SIZE)
    words = scene_attribute_token_ids(tokenizer)
    collator = PretrainingCollator.from_tokenizer(tokenizer, boost_token_ids=words["colour"] + words["shape"],
                                                  boost_probability=0.5, seed=args.seed)
    train = SyntheticSceneDataset(1_000_000, seed=args.seed, transform=transform, tokenizer=tokenizer)
    loader = torch.utils.data.DataLoader(train, batch_size=sizes.batch, shuffle=True, collate_fn=collator,
                                         generator=torch.Generator().manual_seed(args.seed))

    model = SceneVLModel(len(tokenizer), tokenizer.pad_token_id, sizes)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; bridges {', '.join(BRIDGES)}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, min(100, args.steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 0
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / args.steps, 1.0)))))

    losses, start = [], time.perf_counter()
    batches = iter(loader)
    for step in range(1, args.steps + 1):
        loss, parts = pretraining_loss(model, next(batches))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % max(1, args.steps // 10) == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss.item():.3f}  (mlm {parts['mlm']:.3f}, itm {parts['itm']:.3f})"
                  f"  {time.perf_counter() - start:.0f} s")
    train_seconds = time.perf_counter() - start

    accuracy = {kind: itm_accuracy(model, collator, tokenizer, transform, kind, args.eval_size)
                for kind in ("random", "colour", "shape", "position")}
    print(f"held-out ITM accuracy ({args.eval_size} pairs each, chance 50%): "
          + ", ".join(f"{kind} negatives {acc:.1%}" for kind, acc in accuracy.items()))
    result = {"size": args.size, "steps": args.steps, "bridges": list(BRIDGES), "losses": losses,
              "train_seconds": train_seconds, "itm_accuracy": accuracy}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
