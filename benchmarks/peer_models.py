"""The two decoder configurations ``benchmarks.peers`` races every tool on (host-side: torch,
transformers, tokenizers), saved as ``save_pretrained`` folders with a tokenizer beside them.

- ``gpt2``: GPT-2 at the size of our TinyStories model (d256, 4 layers, 8 heads, FFN 1024,
  4,096-token vocabulary, 512 positions): learned positions, full multi-head attention.
- ``llama``: a Llama of the same width and depth with grouped-query attention (8 query heads
  share 4 KV heads), rotary positions, SwiGLU FFN 704 (about the GPT-2's parameter count).

Weights are random (seeded) at initializer_range 0.2, norm gains and biases too: at the default
0.02 greedy decoding repeats one token at once, which hides a cache that returns stale
positions. Token-for-token equality between the tools is one of the benchmark's checks, so the
weights must make the tokens depend on the whole context.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

VOCAB = 4096
POSITIONS = 512
ARCHS = ("gpt2", "llama")
_WORDS = ("once upon a time there was a little girl named lily she liked to play in the park "
          "with her dog max one day they found a big red ball under a tree and the sun was "
          "warm so they ran and laughed until mom called them home for dinner").split()


def train_tokenizer(vocab: int = VOCAB):
    """A byte-level BPE trained on generated sentences (<|endoftext|> = 0), so no file is needed;
    its vocabulary is at most ``vocab`` (what a small corpus yields), below the model's."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    rng = random.Random(0)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(40)) for _ in range(2000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def config_of(arch: str):
    import transformers as T

    special = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0, initializer_range=0.2)
    if arch == "gpt2":
        return T.GPT2Config(vocab_size=VOCAB, n_embd=256, n_layer=4, n_head=8, n_inner=1024,
                            n_positions=POSITIONS, **special), "GPT2LMHeadModel"
    if arch == "llama":
        return T.LlamaConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=4,
                             num_attention_heads=8, num_key_value_heads=4,
                             intermediate_size=704, max_position_embeddings=POSITIONS,
                             tie_word_embeddings=False, **special), "LlamaForCausalLM"
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def make_folder(root: Path, arch: str, seed: int = 0) -> Dict:
    """``root/arch`` with config.json, model.safetensors, tokenizer.json and
    tokenizer_config.json (onnxruntime-genai's builder reads the tokenizer through
    ``AutoTokenizer``); returns the folder and the parameter count."""
    import torch
    import transformers as T

    torch.manual_seed(seed)
    cfg, class_name = config_of(arch)
    model = getattr(T, class_name)(cfg).eval()
    randomize_vectors(model)
    folder = Path(root) / arch
    model.save_pretrained(str(folder))
    fast = T.PreTrainedTokenizerFast(tokenizer_object=train_tokenizer(), eos_token="<|endoftext|>",
                                     bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(folder))
    return {"folder": str(folder), "parameters": sum(p.numel() for p in model.parameters())}


def randomize_vectors(model) -> None:
    """Norm gains and biases as a trained model has them, not transformers' init (gains 1,
    biases 0): a gain of exactly 1 is a Mul that graph optimizers delete, which would make a
    norm look cheaper (or fuse differently) than it is in a real checkpoint."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 1:
                base = 1.0 if bool((param == 1).all()) else 0.0
                param.normal_(base, 0.1 if base else 0.02)


def prompt_ids(folder: Path, text: str = "once upon a time there was a little girl") -> List[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json")).encode(text).ids
