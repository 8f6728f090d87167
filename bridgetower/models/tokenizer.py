"""A word-level RoBERTa-compatible tokenizer built offline from a word list.

BridgeTower uses RoBERTa's BPE tokenizer (``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3,
``<mask>`` = 4 in ``roberta-base``'s vocabulary).  Fetching it needs the network; this module
builds a word-level tokenizer with the same special tokens, ids and ``<s> ... </s>`` template
from a word list, with the ``tokenizers`` library only, and wraps it as a
``transformers.PreTrainedTokenizerFast`` so everything that takes a ``transformers`` tokenizer
(padding, truncation, ``return_tensors``, ``save_pretrained`` / ``AutoTokenizer``) works.
``bridgetower pretrain`` builds one from the words of the user's captions when no tokenizer
is given; the synthetic scene data and the tests use it too.

Example::

    tok = build_wordlevel_tokenizer(["a", "red", "cube", "on", "the", "left"])
    batch = tok(["a red cube", "the cube on the left"], padding=True, return_tensors="pt")
"""

from __future__ import annotations

import os
from collections.abc import Iterable

SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
"""Special tokens in id order: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, ``<mask>`` = 4."""

__all__ = ["SPECIAL_TOKENS", "build_test_tokenizer", "build_wordlevel_tokenizer"]


def build_wordlevel_tokenizer(
    words: Iterable[str],
    save_dir: str | os.PathLike | None = None,
    *,
    lowercase: bool = True,
    model_max_length: int = 512,
):
    """Build a word-level RoBERTa-style fast tokenizer from ``words`` without any download.

    Ids: the five :data:`SPECIAL_TOKENS` first, then the distinct ``words`` in first-seen order
    (lower-cased if ``lowercase``).  Text is split on whitespace and punctuation; unknown words
    map to ``<unk>``.  Single sequences become ``<s> ... </s>``, pairs ``<s> A </s></s> B </s>``
    (RoBERTa's template).  With ``save_dir`` the tokenizer is also written there with
    ``save_pretrained`` (loadable with ``transformers.AutoTokenizer.from_pretrained``).

    Returns a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    if isinstance(words, str):
        raise TypeError("build_wordlevel_tokenizer: words must be an iterable of words, not a single str")
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in words:
        if not isinstance(w, str):
            raise TypeError(f"build_wordlevel_tokenizer: every word must be a str, got {type(w).__name__}: {w!r}")
        w = w.lower() if lowercase else w
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"build_wordlevel_tokenizer: words must be non-empty and contain no whitespace, got {w!r}")
        vocab.setdefault(w, len(vocab))
    if model_max_length < 2:
        raise ValueError(f"build_wordlevel_tokenizer: model_max_length must be >= 2, got {model_max_length}")

    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=model_max_length,
        padding_side="right",
    )
    if save_dir is not None:
        tokenizer.save_pretrained(os.fspath(save_dir))
    return tokenizer


#: The former name of :func:`build_wordlevel_tokenizer` (kept as an alias).
build_test_tokenizer = build_wordlevel_tokenizer
