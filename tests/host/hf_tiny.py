"""Tiny random Hugging Face checkpoint folders, built with transformers in the test (never
downloaded): hidden 32, 2 layers, a vocabulary of about 300, and a ``tokenizer.json`` made with
``tokenizers`` whose ids all fit the embedding."""
from __future__ import annotations

from pathlib import Path

VOCAB = 300


CORPUS = [
    "once upon a time there was a little cat who liked to play in the sun",
    "the dog ran to the park and found a red ball under a big tree",
    "this film was wonderful and the acting was great, a lovely story",
    "a dull and boring movie, the plot made no sense and the ending was awful",
] * 20


def wordpiece_tokenizer(vocab: int = VOCAB):
    """BERT-style: lowercase WordPiece, [CLS] text [SEP] added by the post-processor."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS, trainers.WordPieceTrainer(
        vocab_size=vocab, special_tokens=specials, show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def byte_bpe_tokenizer(vocab: int = VOCAB):
    """GPT-2-style byte-level BPE with <|endoftext|> = 0 (and <pad> = 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def tiny_config(arch: str, vocab: int = VOCAB, positions: int = 160):
    """(transformers config, model class name) of each architecture the export supports."""
    import transformers as T

    if arch in ("bert", "bert_bare"):
        cfg = T.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64,
                           max_position_embeddings=64, id2label={0: "bad", 1: "good"},
                           label2id={"bad": 0, "good": 1})
        return cfg, ("BertModel" if arch == "bert_bare" else "BertForSequenceClassification")
    if arch == "roberta":
        return T.RobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=66, pad_token_id=0, bos_token_id=2,
                               eos_token_id=3, num_labels=3), "RobertaForSequenceClassification"
    if arch == "distilbert":
        return T.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=64), \
            "DistilBertForSequenceClassification"
    # initializer_range 0.2, not 0.02: a random model at 0.02 repeats one token after a few
    # steps, which a broken cache would reproduce too; at 0.2 greedy runs visit 25-60 tokens.
    special = dict(bos_token_id=0, eos_token_id=0, pad_token_id=1, initializer_range=0.2)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4,
                            n_positions=positions, **special), "GPT2LMHeadModel"
    if arch == "gpt_neo":  # layer 0 global, layer 1 local with a window shorter than the text
        return T.GPTNeoConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4,
                              attention_types=[[["global", "local"], 1]], window_size=8,
                              max_position_embeddings=positions, intermediate_size=64,
                              **special), "GPTNeoForCausalLM"
    if arch == "llama":  # grouped-query attention: 4 query heads share 2 KV heads
        return T.LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                             max_position_embeddings=positions, **special), "LlamaForCausalLM"
    raise ValueError(arch)


def make_folder(root: Path, arch: str, seed: int = 0, vocab: int = VOCAB) -> Path:
    """``root/arch``: config.json, model.safetensors, tokenizer.json of a random model."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    cfg, class_name = tiny_config(arch, vocab)
    model = getattr(T, class_name)(cfg).eval()
    folder = Path(root) / arch
    model.save_pretrained(str(folder))
    encoder = arch in ("bert", "bert_bare", "roberta", "distilbert")
    tok = wordpiece_tokenizer() if encoder else byte_bpe_tokenizer()
    if arch == "bert_bare":  # as sentence-transformers saves them: fixed padding, truncation
        tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
        tok.enable_truncation(16)
    tok.save(str(folder / "tokenizer.json"))
    return folder
