"""studio-mini's training data: seeded renders held as arrays, saved once per run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from studio.core.atomic import write_file
from studio.sim.renderer import (
    render_scene,
    sample_attributes,
)
from studio.training.mini.recipe import prompt_style_caption


class SceneArrays:
    """Rendered scenes held as arrays: images (N, S, S, 3) uint8, product masks (N, S, S) uint8, captions, attributes.

    Indexing gives the trainer's example dicts (image, product_mask, caption).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, captions: list[str], attributes: list[dict]):
        self.images, self.masks, self.captions, self.attributes = images, masks, captions, attributes

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": Image.fromarray(self.images[index]), "product_mask": Image.fromarray(self.masks[index]),
                "caption": self.captions[index]}

    @classmethod
    def render(cls, n: int, size: int, seed: int, exclude=frozenset(), progress: bool = True,
               prompt_style: float = 0.0) -> "SceneArrays":
        """Render `n` seeded scenes of size x size pixels; a `prompt_style` share of them get a caption in the
        prompt model's style instead of the renderer's."""
        from tqdm.auto import tqdm

        rng = np.random.default_rng([seed, 7])
        styler = np.random.default_rng([seed, 8])  # its own stream: the images do not depend on prompt_style
        images, masks, captions, attributes = [], [], [], []
        for _ in tqdm(range(n), desc="render", disable=not progress):
            drawn = sample_attributes(rng, set(exclude))
            scene = render_scene(size=size, seed=int(rng.integers(2**31)), **drawn)
            images.append(np.asarray(scene.image))
            masks.append(np.asarray(scene.product_mask))
            styled = prompt_style_caption(scene.attributes, styler) if styler.uniform() < prompt_style else None
            captions.append(styled or scene.caption)
            attributes.append(scene.attributes)
        return cls(np.stack(images), np.stack(masks), captions, attributes)

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        write_file(path, lambda tmp: save_file(
            {"images": self.images, "masks": self.masks}, str(tmp),
            metadata={"captions": json.dumps(self.captions), "attributes": json.dumps(self.attributes)}))

    @classmethod
    def load(cls, path: Path) -> "SceneArrays":
        from safetensors import safe_open
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
        with safe_open(str(path), "np") as handle:
            metadata = handle.metadata()
        return cls(arrays["images"], arrays["masks"], json.loads(metadata["captions"]),
                   json.loads(metadata["attributes"]))


