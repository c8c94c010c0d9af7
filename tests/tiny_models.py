"""Builders of tiny real models for tests: random-initialised, saved the way real checkpoints are
(`save_pretrained` with safetensors plus the tokenizer files), so the tests exercise the same loading code
a user's model goes through. Nothing is downloaded.

- `build_tiny_deberta`: a DeBERTa-v3-style backbone (relative attention, no absolute positions) with a
  sentencepiece unigram tokenizer trained on sample instruction text, in a folder shaped like
  `microsoft/deberta-v3-base` (spm.model, tokenizer files, config.json, model.safetensors).
- `build_tiny_gpt2`: a GPT-2 causal LM with a byte-level BPE tokenizer, shaped like the proxy LM that
  `thresher lm train` writes (`<|endoftext|>` as BOS, EOS and padding).
- `build_tiny_encoder`: a BERT encoder with a WordPiece tokenizer, shaped like a sentence-embedding model.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from thresher.pipelines.testing.sample_data import generate_instructions

EOS = "<|endoftext|>"


def instruction_lines(rows: int = 3000, seed: int = 101) -> list[str]:
    """Every non-empty instruction, input and output of a generated instruction set."""
    table = generate_instructions(rows, seed=seed)
    lines: list[str] = []
    for column in ("instruction", "input", "output"):
        lines += [t for t in table[column].to_pylist() if t and t.strip()]
    return lines


def build_tiny_deberta(
    folder: Path,
    *,
    seed: int = 0,
    vocab_size: int = 600,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    texts: Iterable[str] | None = None,
) -> Path:
    """A random-initialised DeBERTa-v3-style backbone (`DebertaV2Model`, no task head) and its tokenizer."""
    import sentencepiece as spm
    import torch
    from transformers import DebertaV2Config, DebertaV2Model, DebertaV2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model_proto = io.BytesIO()
    # DeBERTa-v3's special-token layout ([PAD]=0, [CLS]=1, [SEP]=2, [UNK]=3, [MASK] user-defined);
    # split_digits so numbers are read digit by digit, which a tiny model needs to check arithmetic.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts) if texts is not None else instruction_lines()),
        model_writer=model_proto,
        vocab_size=vocab_size,
        model_type="unigram",
        split_digits=True,
        character_coverage=1.0,
        pad_id=0,
        bos_id=1,
        eos_id=2,
        unk_id=3,
        pad_piece="[PAD]",
        bos_piece="[CLS]",
        eos_piece="[SEP]",
        unk_piece="[UNK]",
        user_defined_symbols=["[MASK]"],
        num_threads=1,
        minloglevel=2,
    )
    (folder / "spm.model").write_bytes(model_proto.getvalue())
    # Loaded from the folder, as transformers converts a real DeBERTa-v3 spm.model; building the class
    # with `vocab_file=` would silently give a 7-token vocabulary.
    tokenizer = DebertaV2Tokenizer.from_pretrained(str(folder))
    assert len(tokenizer) == vocab_size, f"tokenizer has {len(tokenizer)} tokens, expected {vocab_size}"
    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=64,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    DebertaV2Model(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_gpt2(
    folder: Path,
    *,
    seed: int = 0,
    vocab_size: int = 400,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    context: int = 128,
    texts: Iterable[str] | None = None,
) -> Path:
    """A random-initialised GPT-2 and a byte-level BPE tokenizer, like the proxy LM folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(texts) if texts is not None else instruction_lines(), trainer)
    eos_id = bpe.token_to_id(EOS)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=bpe.get_vocab_size(),
        n_positions=context,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=context
    ).save_pretrained(folder)
    return folder


def build_tiny_encoder(
    folder: Path,
    *,
    seed: int = 0,
    vocab_size: int = 500,
    hidden: int = 32,
    layers: int = 1,
    heads: int = 2,
    texts: Iterable[str] | None = None,
) -> Path:
    """A random-initialised BERT encoder and a WordPiece tokenizer, like a sentence-embedding model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    wordpiece.train_from_iterator(list(texts) if texts is not None else instruction_lines(), trainer)
    # The trainer numbers part of its alphabet (the `##` pieces) in hash order, so ids, and the random
    # embedding row each token gets, would change from one process to the next. WordPiece's
    # longest-match split does not depend on the ids: renumbered in sorted order (specials first), the
    # same encoder comes out in every run.
    learnt = wordpiece.get_vocab()
    ordered = specials + sorted(t for t in learnt if t not in specials)
    wordpiece.model = models.WordPiece({t: i for i, t in enumerate(ordered)}, unk_token="[UNK]")
    cls_id, sep_id = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    BertTokenizerFast(
        tokenizer_object=wordpiece,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=256,
    ).save_pretrained(folder)
    return folder
