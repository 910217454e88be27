"""CLIP's exact byte-pair vocabulary, shipped as package data, as a transformers `CLIPTokenizer` (77 tokens).

The file is open_clip's `bpe_simple_vocab_16e6.txt.gz`; reading it needs neither open_clip nor the network.
"""

from __future__ import annotations

import gzip
import json
import os
from functools import lru_cache
from pathlib import Path

BPE_FILE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_CONTEXT = 77  # CLIP's window, start and end tokens included
# open_clip keeps the first 49152 - 256 - 2 merges (SimpleTokenizer); so do OpenAI CLIP and transformers.
_MERGES = 49152 - 256 - 2


def _byte_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character table in CLIP's order: printable bytes first, then the rest
    mapped to 256 + n (the first 256 vocabulary entries)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    rest = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + n) for n in range(len(rest))]


@lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """(token -> id, merges) exactly as CLIP's tokenizer: 49,408 tokens, `<|startoftext|>` 49406, `<|endoftext|>`
    49407."""
    with gzip.open(BPE_FILE, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = lines[1:_MERGES + 1]
    characters = _byte_unicode()
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write CLIP's vocab.json and merges.txt (the files of openai/clip-vit-base-patch32's tokenizer) to folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocabulary()
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def clip_tokenizer(folder: str | os.PathLike, model_max_length: int = CLIP_CONTEXT):
    """A transformers CLIPTokenizer over CLIP's exact vocabulary, its files written to folder (kept there)."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    # from_pretrained reads vocab.json + merges.txt under every transformers 5.x (the constructor's names changed).
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return CLIPTokenizer.from_pretrained(str(folder))


def count_clip_tokens(text: str) -> int:
    """CLIP tokens of `text`, start and end tokens included (the figure CLIP's 77-token window limits)."""
    return len(_default_tokenizer()(text, truncation=False)["input_ids"])


@lru_cache(maxsize=1)
def _default_tokenizer():
    import tempfile

    return clip_tokenizer(tempfile.mkdtemp(prefix="clip-bpe-"))
