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


def byte_bpe_tokenizer(vocab: int = VOCAB, extra_specials=()):
    """GPT-2-style byte-level BPE with <|endoftext|> = 0 (and <pad> = 1), then
    ``extra_specials`` (ids 2, 3, ...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>", "<pad>", *extra_specials],
        show_progress=False,
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
    built = _rotary_family_config(arch, vocab, positions, special)
    if built is not None:
        return built
    raise ValueError(arch)


# The families of export/hf_decoder_families.py: 4 query heads over 2 KV heads, every window
# shorter than the parity and greedy prompts so that it bites.
ROTARY_ARCHS = ("qwen2", "mistral", "phi3", "gemma", "llama_yarn", "llama_dynamic",
                "phi3_longrope")


def _rotary_family_config(arch: str, vocab: int, positions: int, special):
    import transformers as T

    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64,
                  max_position_embeddings=positions, **special)
    if arch == "qwen2":  # Qwen2.5-style tied head; layer 1 sliding (layers >= max_window_layers)
        return T.Qwen2Config(use_sliding_window=True, sliding_window=8, max_window_layers=1,
                             tie_word_embeddings=True, **common), "Qwen2ForCausalLM"
    if arch == "mistral":
        return T.MistralConfig(sliding_window=8, **common), "MistralForCausalLM"
    if arch == "phi3":  # fused qkv_proj and gate_up_proj; Phi-3-mini has a window (2047) too
        return T.Phi3Config(sliding_window=12, **common), "Phi3ForCausalLM"
    if arch == "phi3_longrope":  # Phi-3.5 style: short factors up to 160, long ones beyond
        common["max_position_embeddings"] = 4 * positions
        rope = {"rope_type": "longrope", "rope_theta": 10000.0,
                "original_max_position_embeddings": positions,
                "short_factor": [1.0, 1.1, 1.3, 1.7], "long_factor": [2.0, 3.0, 5.0, 8.0]}
        return T.Phi3Config(rope_parameters=rope, original_max_position_embeddings=positions,
                            **common), "Phi3ForCausalLM"
    if arch == "gemma":  # head_dim 16 != hidden / heads, as Gemma's 256 is; at 0.2 the tied,
        # sqrt(hidden)-scaled embedding makes greedy runs repeat 2-5 tokens, at 0.4 they visit 50
        common["initializer_range"] = 0.4
        return T.GemmaConfig(head_dim=16, hidden_act="gelu_pytorch_tanh", **common), \
            "GemmaForCausalLM"
    if arch == "llama_yarn":
        rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                "original_max_position_embeddings": positions // 4}
        return T.LlamaConfig(rope_parameters=rope, **common), "LlamaForCausalLM"
    if arch == "llama_dynamic":
        rope = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
        return T.LlamaConfig(rope_parameters=rope, **common), "LlamaForCausalLM"
    return None


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
    # AutoTokenizer gives a Gemma folder <bos>/<eos>/<unk>/<mask> (its class defaults) as added
    # tokens beyond the vocabulary unless tokenizer.json has them, as a real Gemma one does.
    gemma_specials = ("<bos>", "<eos>", "<unk>", "<mask>") if arch == "gemma" else ()
    tok = wordpiece_tokenizer() if encoder else byte_bpe_tokenizer(extra_specials=gemma_specials)
    if arch == "bert_bare":  # as sentence-transformers saves them: fixed padding, truncation
        tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
        tok.enable_truncation(16)
    tok.save(str(folder / "tokenizer.json"))
    return folder


# --- text handling and heads (issue 23): pair templates, ELECTRA, Llama-style <s> tokenizers ---
def wordpiece_pair_tokenizer(vocab: int = VOCAB):
    """``wordpiece_tokenizer`` with BERT's pair template: [CLS] A [SEP] B [SEP], types 0 / 1."""
    from tokenizers import processors

    tok = wordpiece_tokenizer(vocab)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def make_head_folder(root: Path, name: str, arch: str = "bert", num_labels: int = 3,
                     problem_type: str | None = None, truncation_side: str | None = None,
                     seed: int = 0) -> Path:
    """A sequence classifier (``bert``: type_vocab_size 2, so pairs; ``electra``: embedding 16
    projected to hidden 32, GeLU head) with ``num_labels`` and ``problem_type``; a
    tokenizer_config.json with ``truncation_side`` when given."""
    import json

    import torch
    import transformers as T

    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                  problem_type=problem_type, initializer_range=0.2)
    if arch == "electra":
        model = T.ElectraForSequenceClassification(T.ElectraConfig(embedding_size=16, **common))
    else:
        model = T.BertForSequenceClassification(T.BertConfig(**common))
    folder = Path(root) / name
    model.eval().save_pretrained(str(folder))
    wordpiece_pair_tokenizer().save(str(folder / "tokenizer.json"))
    if truncation_side is not None:
        (folder / "tokenizer_config.json").write_text(
            json.dumps({"truncation_side": truncation_side}), encoding="utf-8")
    return folder


def bos_bpe_tokenizer(vocab: int = VOCAB):
    """Llama-style: byte-level BPE with <unk>=0, <s>=1, </s>=2, and a post-processor that puts
    <s> before every text (as Llama's tokenizer.json does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return tok


def make_llama_bos_folder(root: Path, name: str, eos_token_id=2, generation_eos=None,
                          seed: int = 0, model_vocab: int = VOCAB) -> Path:
    """A tiny Llama whose tokenizer adds <s> (bos 1), with config.json's ``eos_token_id`` (an
    int or a Llama-3-style list) and, when given, generation_config.json's. model_vocab: the
    embedding's rows (more than the tokenizer's, for tokens tokenizer_config.json adds)."""
    import json

    import torch
    import transformers as T

    torch.manual_seed(seed)
    cfg = T.LlamaConfig(vocab_size=model_vocab, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                        max_position_embeddings=160, bos_token_id=1, eos_token_id=eos_token_id,
                        pad_token_id=0, initializer_range=0.2)
    folder = Path(root) / name
    T.LlamaForCausalLM(cfg).eval().save_pretrained(str(folder))
    gen = {"bos_token_id": 1, "eos_token_id": eos_token_id, "pad_token_id": 0}
    if generation_eos is not None:
        gen["eos_token_id"] = generation_eos
    (folder / "generation_config.json").write_text(json.dumps(gen), encoding="utf-8")
    bos_bpe_tokenizer().save(str(folder / "tokenizer.json"))
    return folder
