"""What studio-mini has learned, measured: colour and material adherence, the VAE's ceiling, and the LoRA proof."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from studio.core.vocabulary import COLOURS, MATERIALS, PRODUCTS
from studio.sim.renderer import (
    NEUTRAL_PRODUCT_COLOUR,
    render_scene,
    sample_attributes,
)
from studio.training.mini.recipe import HELD_OUT_PAIRS
from studio.training.mini.vae import reconstruct


def neutral_scene(size: int, seed: int):
    """The gate's input: a neutral grey product on a plain grey backdrop (the backdrop gets repainted)."""
    return render_scene("grey", "plain", "soft", "studio", PRODUCTS[seed % len(PRODUCTS)], size=size, seed=seed,
                        product_colour=NEUTRAL_PRODUCT_COLOUR, template=0)


def creative_latency(engine, steps: int, guidance: float, runs: int = 3) -> dict:
    """What a user waits for and holds: `runs` 512 x 512 creatives through the studio path (place the product, paint
    at the model's size, upscale, paste back), of which the first warms up. Returns the median seconds of the others
    (`latency_s`), whether every creative kept the product's pixels bit for bit (`product_bit_exact`), and the
    process's peak resident memory so far (`peak_rss_mb`). engine: a loaded engine or a model folder."""
    import resource
    import time

    from studio.imaging.canvas import place_product
    from studio.imaging.creatives import CreativeSettings, generate_creatives

    scene = neutral_scene(512, seed=0)
    prompt = "a bottle on a blue marble backdrop soft light studio shot"
    canvas = place_product(scene.image, np.asarray(scene.product_mask) > 127, size=512)
    settings = CreativeSettings(size=512, steps=steps, guidance=guidance)
    latencies, exact = [], True
    for run in range(runs):
        started = time.perf_counter()
        creative = generate_creatives(scene.image, prompt, settings=settings, n=1, seed=run, engine=engine,
                                      mask=scene.product_mask, progress=False)[0]
        latencies.append(time.perf_counter() - started)
        pixels = np.asarray(creative.image)
        exact &= bool(np.array_equal(pixels[canvas.keep], np.asarray(canvas.image)[canvas.keep]))
    return {"latency_s": float(np.median(latencies[1:] if len(latencies) > 1 else latencies)),
            "product_bit_exact": exact,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def nearest_colour(rgb: np.ndarray) -> str:
    """The named colour of COLOURS nearest (Euclidean, sRGB 0-255) to an RGB triple."""
    names = list(COLOURS)
    table = np.asarray([COLOURS[name] for name in names], float)
    return names[int(np.argmin(((table - np.asarray(rgb, float)) ** 2).sum(1)))]


def generate_backgrounds(pipeline, prompts: list[str], seeds: list[int], size: int, steps: int,
                         guidance: float = 4.0, negative_prompts: list[str] | None = None
                         ) -> list[tuple[Image.Image, np.ndarray]]:
    """Repaint the backdrop of a neutral scene per (prompt, seed) at the native size; returns (image, background
    boolean mask (S, S)) pairs."""
    import torch

    pipeline.set_progress_bar_config(disable=True)
    results = []
    for prompt, seed, negative in zip(prompts, seeds, negative_prompts or [None] * len(prompts)):
        scene = neutral_scene(size, seed)
        generator = torch.Generator().manual_seed(seed)
        image = pipeline(prompt=prompt, negative_prompt=negative, image=scene.image, mask_image=scene.background_mask,
                         height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                         generator=generator).images[0]
        results.append((image, np.asarray(scene.product_mask) < 128))
    return results


def colour_adherence(pipeline, seeds: tuple[int, ...] = (0, 1, 2, 3), size: int = 64, steps: int = 20,
                     guidance: float = 4.0) -> dict:
    """Share of (colour, seed) cases whose generated background mean colour is nearest to the requested colour."""
    colours = list(COLOURS)
    cases = [(colour, seed) for colour in colours for seed in seeds]
    prompts = [f"a {PRODUCTS[seed % len(PRODUCTS)]} on a {colour} plain backdrop soft light studio shot"
               for colour, seed in cases]
    outputs = generate_backgrounds(pipeline, prompts, [seed for _, seed in cases], size, steps, guidance)
    hits, confusions = 0, {}
    for (colour, _), (image, background) in zip(cases, outputs):
        got = nearest_colour(np.asarray(image, float)[background].mean(0))
        hits += got == colour
        if got != colour:
            confusions[f"{colour}->{got}"] = confusions.get(f"{colour}->{got}", 0) + 1
    return {"colour_adherence": hits / len(cases), "cases": len(cases), "confusions": confusions}


def prompt_model_adherence(pipeline, prompts_per_group: int = 8, seeds: tuple[int, ...] = (0, 1), size: int = 64,
                           steps: int = 20, guidance: float = 4.0) -> dict:
    """Colour adherence on what `studio campaign` sends: prompts-mini's prompts (with their negative prompts) for the
    reward-mini audience groups. A case hits when the background is nearest to the first colour its prompt names."""
    from prompts.brief import Brief
    from prompts.loading import load_prompt_model
    from prompts.validation import words
    from reward.model import resolve_model_folder
    from studio.learning.audience import AudienceClustering

    writer = load_prompt_model(None)
    groups = AudienceClustering.from_pretrained(resolve_model_folder("reward-mini") / "audience").profiles_
    cases = []
    for profile in groups:
        brief = Brief.from_dict({"audience": profile.to_dict(), "product": {"title": "bottle", "category": "beverage"}})
        for seed in seeds:
            for prompt in writer.suggest(brief, n=prompts_per_group, seed=seed):
                colour = next((word for word in words(prompt.positive) if word in COLOURS), None)
                if colour is not None:
                    cases.append((prompt, colour, seed * 100 + len(cases)))
    outputs = generate_backgrounds(pipeline, [p.positive for p, *_ in cases], [seed for *_, seed in cases], size,
                                   steps, guidance, negative_prompts=[p.negative for p, *_ in cases])
    hits = sum(nearest_colour(np.asarray(image, float)[background].mean(0)) == colour
               for (_, colour, _), (image, background) in zip(cases, outputs))
    return {"prompt_model_colour_adherence": hits / max(1, len(cases)), "prompt_model_cases": len(cases)}



def texture_features(images: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
    """Colour-blind texture features of RGB images (N, S, S, 3) uint8: log power spectrum in radius x angle bins and
    gradient statistics of the brightness, normalised per image. masks (N, S, S) bool: True on background pixels;
    the product region is filled with the background mean so it adds little texture. Returns (N, F) float."""
    grey = images.astype(np.float32).mean(-1)
    if masks is not None:
        means = np.array([g[m].mean() if m.any() else g.mean() for g, m in zip(grey, masks)])
        grey = np.where(masks, grey, means[:, None, None])
    grey = grey - grey.mean(axis=(1, 2), keepdims=True)
    grey = grey / (grey.std(axis=(1, 2), keepdims=True) + 1.0)
    size = grey.shape[1]
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey), axes=(1, 2))) ** 2
    fy, fx = np.mgrid[0:size, 0:size] - size // 2
    radius = np.hypot(fx, fy) / (size / 2)
    angle = (np.arctan2(fy, fx) % np.pi) / np.pi
    radial_bins = np.minimum((radius * 8).astype(int), 7)
    angle_bins = np.minimum((angle * 4).astype(int), 3)
    features = []
    for r in range(8):
        for a in range(4):
            cell = (radial_bins == r) & (angle_bins == a) & (radius > 0)
            features.append(np.log1p(power[:, cell].mean(1)))
    gx, gy = np.diff(grey, axis=2), np.diff(grey, axis=1)
    features += [np.abs(gx).mean((1, 2)), np.abs(gy).mean((1, 2)), (gx ** 2).mean((1, 2)), (gy ** 2).mean((1, 2)),
                 np.percentile(grey.reshape(len(grey), -1), 95, axis=1),
                 np.percentile(grey.reshape(len(grey), -1), 5, axis=1)]
    return np.stack(features, axis=1)


def fit_material_classifier(n: int = 1800, size: int = 64, seed: int = 0):
    """A material classifier fitted on renderer ground truth only (never on generated images).

    Returns (classifier, held-out accuracy on fresh renders): the ceiling for material adherence."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def features(count, salt):
        images, masks, labels = material_renders(count, size, seed, salt)
        return texture_features(images, masks), labels

    x, y = features(n, 21)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(x, y)
    x_test, y_test = features(max(120, n // 5), 22)
    return classifier, float((classifier.predict(x_test) == y_test).mean())


def material_renders(count: int, size: int, seed: int, salt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` seeded renders with random attributes: images (N, S, S, 3) uint8, backdrop masks (N, S, S) bool
    (True outside the product) and the material names (N,)."""
    rng = np.random.default_rng([seed, salt])
    images, masks, labels = [], [], []
    for _ in range(count):
        drawn = sample_attributes(rng)
        scene = render_scene(size=size, seed=int(rng.integers(2**31)), **drawn)
        images.append(np.asarray(scene.image))
        masks.append(np.asarray(scene.product_mask) < 128)
        labels.append(drawn["material"])
    return np.stack(images), np.stack(masks), np.array(labels)


def material_adherence(pipeline, classifier, seeds: tuple[int, ...] = (0, 1), size: int = 64,
                       steps: int = 20, colours: tuple[str, ...] = tuple(COLOURS), guidance: float = 4.0) -> dict:
    """Share of generated backgrounds (6 materials x colours x seeds) the renderer-trained classifier reads as the
    requested material."""
    cases = [(material, colour, seed) for material in MATERIALS for colour in colours for seed in seeds]
    prompts = [f"a {PRODUCTS[seed % len(PRODUCTS)]} on a {colour} {material} backdrop soft light studio shot"
               for material, colour, seed in cases]
    outputs = generate_backgrounds(pipeline, prompts, [seed for *_, seed in cases], size, steps, guidance)
    features = texture_features(np.stack([np.asarray(image) for image, _ in outputs]),
                                np.stack([background for _, background in outputs]))
    predicted = classifier.predict(features)
    hits = predicted == np.array([material for material, *_ in cases])
    return {"material_adherence": float(np.mean(hits)), "material_cases": len(cases)}


def vae_material_ceiling(vae, classifier, n: int = 360, size: int = 64, seed: int = 0) -> float:
    """The material classifier's accuracy on the VAE's reconstructions of fresh renders: what any UNet painting in this
    VAE's latent space can hope to reach."""
    images, masks, labels = material_renders(n, size, seed, 23)
    features = texture_features(reconstruct(vae, images), masks)
    return float(np.mean(classifier.predict(features) == labels))


# A mood word: studio-mini's captions attach it to random scenes, so before the LoRA it paints nothing in particular.
PROOF_WORD = "neon"


def paint_proof_word(pipeline) -> np.ndarray:
    """What `PROOF_WORD` paints behind the neutral product at a fixed seed: (64, 64, 3) floats in 0..1."""
    import torch

    scene = neutral_scene(64, seed=0)
    return pipeline(prompt=f"a bottle on a {PROOF_WORD} backdrop", image=scene.image,
                    mask_image=scene.background_mask, num_inference_steps=8, guidance_scale=4.0,
                    generator=torch.Generator().manual_seed(0), output_type="np").images[0]


def lora_word_proof(model: str | os.PathLike, folder: str | os.PathLike, steps: int = 30) -> dict:
    """DreamBooth-style LoRA proof: fine-tune `model` with LoRA on six renders of the never-trained pink x wood pair
    captioned with `PROOF_WORD`, and measure how far the background the word paints is from those renders' mean colour
    (0-255 RGB) before and after. Writes the shots, the run and the LoRA (folder/lora) under `folder`.

    Returns distance_before, distance_after, lora (the saved LoRA folder) and pixels (what the word paints after).
    """
    from diffusers import AutoPipelineForInpainting

    from studio.training.trainer import (
        Components,
        FolderData,
        InpaintingTrainer,
        TrainConfig,
        encode_dataset,
    )

    colour, material = HELD_OUT_PAIRS[0]
    folder, shots = Path(folder), Path(folder) / "shots"
    shots.mkdir(parents=True, exist_ok=True)
    backdrops = []
    for seed in range(6):
        scene = render_scene(colour, material, "soft", "studio", "bottle", size=64, seed=seed)
        scene.image.save(shots / f"{seed}.png")
        scene.product_mask.save(shots / f"{seed}.mask.png")
        (shots / f"{seed}.txt").write_text(f"a bottle on a {PROOF_WORD} backdrop")
        backdrops.append(np.asarray(scene.backdrop, float).reshape(-1, 3).mean(0))
    target = np.mean(backdrops, axis=0)
    background = np.asarray(neutral_scene(64, seed=0).product_mask) < 128

    def distance(pixels: np.ndarray) -> float:
        return float(np.linalg.norm(pixels[background].mean(0) * 255 - target))

    pipeline = AutoPipelineForInpainting.from_pretrained(model)
    pipeline.set_progress_bar_config(disable=True)
    before = distance(paint_proof_word(pipeline))
    config = TrainConfig(steps=steps, batch_size=6, learning_rate=5e-3, lora=True, lora_rank=8, checkpoint_every=steps,
                         caption_dropout=0.0, snr_gamma=None, mask_modes={"product": 1.0})
    data = encode_dataset(Components.from_pipeline(pipeline), FolderData(shots), config, progress=False)
    trainer = InpaintingTrainer(pipeline, config).fit(data, folder / "run", progress=False)
    after = paint_proof_word(pipeline)
    saved = trainer.save(folder / "lora")
    return {"distance_before": before, "distance_after": distance(after), "lora": str(saved), "pixels": after}


