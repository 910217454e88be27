"""studio-mini: the embedded Stable-Diffusion-architecture inpainting model, trained from scratch on the renderer.

The recipe (`train_mini`, the `studio train-mini` command) runs in resumable stages under one run folder:
1. data  -- render a fixed, seeded set of 64x64 product scenes (one held-out colour x material pair is never shown);
2. vae   -- train an AutoencoderKL (4x down-sampling, 4 latent channels) until it reconstructs held-out renders at the
            PSNR goal, then freeze it and set its scaling factor to 1 / std of the latents;
3. cache -- encode every scene once with the frozen VAE and the frozen random-init CLIP text encoder
            (`studio.training.trainer.encode_dataset`): UNet steps then pay for the UNet only;
4. unet  -- train the 9-channel UNet2DConditionModel from scratch with `studio.training.trainer.InpaintingTrainer`, probing
            colour and material adherence at every checkpoint and keeping the best (EMA) pipeline;
5. export -- copy the best pipeline to the model folder (studio/models/studio-mini by default).

`evaluate_mini` is the quality gate (`studio eval-mini`): colour and material adherence, bit-exact product pixels,
latency and peak memory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from prompts.data import (
    BASE_NEGATIVE, PROMPT_TEMPLATES, PROMPT_WORDS, TONE_NEGATIVE, TONES, all_mood_words, negative_prompt,
)
from studio.core.atomic import replace_folder, write_file
from studio.core.errors import InputError
from studio.sim.renderer import CAPTION_WORDS, NEUTRAL_PRODUCT_COLOUR, render_scene, sample_attributes
from studio.core.vocabulary import COLOURS, LAYOUTS, LIGHTING, MATERIALS, PRODUCTS

MODEL_FOLDER = Path(__file__).parents[1] / "models" / "studio-mini"
# The training probe's material check uses these colours only (a quarter of the gate's cases).
PROBE_COLOURS: tuple[str, ...] = ("red", "teal", "white", "black")
# Never rendered for training: the LoRA proof teaches it afterwards.
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (("pink", "wood"),)


@dataclass
class MiniRecipe:
    """Every knob of the studio-mini recipe. Sizes in pixels, learning rates per optimiser step."""

    resolution: int = 64
    n_train: int = 12_000
    n_heldout: int = 256
    seed: int = 0
    vae_steps: int = 4000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    vae_psnr_goal: float = 30.0
    unet_steps: int = 20_000
    unet_batch: int = 32
    unet_lr: float = 5e-4
    unet_warmup: int = 200
    unet_ema_decay: float = 0.999
    # No min-SNR weighting: on a zero-terminal-SNR schedule it would give the noisiest steps, where the global colour
    # is decided, almost no weight.
    unet_snr_gamma: float | None = None
    caption_dropout: float = 0.1
    # Share of training captions written in the prompt model's style (its templates, mood words, commas), so the
    # prompts `studio campaign` sends are in-distribution; dropped captions become "" or one of its negative prompts.
    prompt_style_captions: float = 0.5
    checkpoint_every: int = 500
    text_width: int = 64
    text_length: int = 32
    unet_channels: tuple[int, ...] = (32, 64, 128)
    # Cross-attention per UNet level: none at the full latent size, where it costs most (as SD leaves it out of its
    # lowest-resolution level).
    unet_attention: tuple[bool, ...] = (False, True, True)
    # Also pool the caption into the time embedding (diffusers' addition_embed_type="text", as in DeepFloyd IF), so
    # every ResNet block is scaled and shifted by it: global attributes such as colour are learnt far sooner.
    unet_pooled_text: bool = True
    vae_channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 4  # StableDiffusionInpaintPipeline accepts 9-channel (4 + 1 + 4) UNets only
    inference_steps: int = 20
    held_out: tuple[tuple[str, str], ...] = field(default_factory=lambda: HELD_OUT_PAIRS)


# -------------------------------------------------------------------------------------------------- components


def mini_words() -> list[str]:
    """Every word a studio-mini caption can hold: the scene vocabulary, the caption grammar's words and every word
    the prompt model writes (prompts and negative prompts)."""
    words = [*COLOURS, *MATERIALS, *LIGHTING, *LAYOUTS, *PRODUCTS, *CAPTION_WORDS, *PROMPT_WORDS, *all_mood_words(),
             *BASE_NEGATIVE, *(word for extra in TONE_NEGATIVE.values() for word in extra)]
    return list(dict.fromkeys(words))


def null_captions() -> tuple[str, ...]:
    """What a dropped training caption becomes: "" and each negative prompt the prompt model writes."""
    return ("", *dict.fromkeys(negative_prompt(tone) for tone in TONES))


def prompt_style_caption(attributes: dict, rng: np.random.Generator) -> str:
    """A caption for a scene's attributes in the prompt model's style: one of its templates, random mood words."""
    moods = all_mood_words()
    mood, mood2 = (str(word) for word in rng.choice(moods, size=2, replace=False))
    template = PROMPT_TEMPLATES[int(rng.integers(len(PROMPT_TEMPLATES)))]
    return template.format(**{key: attributes[key] for key in ("colour", "material", "lighting", "layout")},
                           mood=mood, mood2=mood2)


def build_components(folder: str | os.PathLike, recipe: MiniRecipe):
    """Fresh, seeded components: word-level CLIP tokenizer (written to folder/tokenizer), CLIP text encoder,
    AutoencoderKL, 9-channel UNet and the inference scheduler. Returns a StableDiffusionInpaintPipeline."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.imaging.tiny import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(mini_words(), Path(folder) / "tokenizer", model_max_length=recipe.text_length)
    torch.manual_seed(recipe.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.text_width, intermediate_size=2 * recipe.text_width,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=recipe.text_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    levels = len(recipe.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=recipe.vae_channels, layers_per_block=1,
        latent_channels=recipe.latent_channels, norm_num_groups=16, sample_size=recipe.resolution,
        mid_block_add_attention=False)
    latent_size = recipe.resolution // 2 ** (levels - 1)
    if len(recipe.unet_attention) != len(recipe.unet_channels):
        raise InputError("unet_attention needs one flag per UNet level (unet_channels)")
    pooled = dict(addition_embed_type="text", addition_embed_type_num_heads=4,
                  resnet_time_scale_shift="scale_shift") if recipe.unet_pooled_text else {}
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=2 * recipe.latent_channels + 1, out_channels=recipe.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in recipe.unet_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(recipe.unet_attention)),
        block_out_channels=recipe.unet_channels, layers_per_block=1, cross_attention_dim=recipe.text_width,
        attention_head_dim=8, norm_num_groups=16, **pooled)
    # v-prediction on a zero-terminal-SNR schedule: at the first inference step the model sees pure noise, as in
    # training, so the global colour comes from the prompt rather than from leaked low frequencies.
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


# ---------------------------------------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------------------------------------- VAE


def reconstruct(vae, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 images (N, S, S, 3) through the VAE's posterior mean and back, in batches; uint8 (N, S, S, 3)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
            out.append(((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def psnr(vae, images: np.ndarray, batch: int = 64) -> float:
    """Mean reconstruction PSNR (dB) of uint8 images (N, S, S, 3) through the VAE's posterior mean."""
    error = (reconstruct(vae, images, batch).astype(np.float64) - images) / 255
    mse = np.maximum((error ** 2).mean(axis=(1, 2, 3)), 1e-10)
    return float(np.mean(10 * np.log10(1 / mse)))


def train_vae(vae, train: np.ndarray, heldout: np.ndarray, recipe: MiniRecipe, folder: Path,
              progress: bool = True) -> dict:
    """Train the AutoencoderKL on uint8 images (N, S, S, 3), resumable from folder/last; returns its report.

    Loss: MSE + L1 reconstruction + a small KL term (Stable Diffusion's VAE recipe without the GAN and LPIPS terms).
    Stops at `vae_steps` or as soon as the held-out PSNR reaches the goal at a checkpoint.
    """
    import torch
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    state_path = folder / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"step": 0, "psnr": []}
    if (folder / "last").is_dir():
        vae.load_state_dict(AutoencoderKL.from_pretrained(folder / "last").state_dict())
    vae.train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    rng = np.random.default_rng([recipe.seed, 11, state["step"]])
    bar = tqdm(total=recipe.vae_steps, initial=state["step"], desc="vae", disable=not progress)
    while state["step"] < recipe.vae_steps and not (state["psnr"] and state["psnr"][-1][1] >= recipe.vae_psnr_goal):
        step = state["step"]
        # Cosine decay over the step budget, after a short warm-up.
        lr = recipe.vae_lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + np.cos(np.pi * step / recipe.vae_steps))
        for group in optimizer.param_groups:
            group["lr"] = max(lr, recipe.vae_lr * 0.02)
        batch = train[rng.integers(len(train), size=recipe.vae_batch)]
        if rng.uniform() < 0.5:
            batch = batch[:, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 127.5 - 1
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        loss = (y - x).pow(2).mean() + 0.1 * (y - x).abs().mean() + recipe.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if state["step"] % recipe.checkpoint_every == 0 or state["step"] >= recipe.vae_steps:
            vae.eval()
            state["psnr"].append([state["step"], psnr(vae, heldout)])
            vae.train()
            bar.write(f"vae step {state['step']}: held-out PSNR {state['psnr'][-1][1]:.2f} dB")
            _save_atomically(vae, folder / "last")
            write_file(state_path, lambda tmp: tmp.write_text(json.dumps(state, indent=1) + "\n"))
    bar.close()
    vae.eval()
    return state


def _save_atomically(model, folder: Path) -> None:
    """``model.save_pretrained`` (a VAE or a whole pipeline) into a staging folder, then swapped in place."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    replace_folder(tmp, folder)


def latent_scaling_factor(vae, images: np.ndarray, batch: int = 128) -> float:
    """1 / std of the VAE's sampled latents over uint8 images (N, S, S, 3): unit-variance latents for the UNet."""
    import torch

    samples = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1
            samples.append(vae.encode(x).latent_dist.sample().flatten())
    return float(1.0 / torch.cat(samples).std())


# ------------------------------------------------------------------------------------------------------ adherence


def neutral_scene(size: int, seed: int):
    """The gate's input: a neutral grey product on a plain grey backdrop (the backdrop gets repainted)."""
    return render_scene("grey", "plain", "soft", "studio", PRODUCTS[seed % len(PRODUCTS)], size=size, seed=seed,
                        product_colour=NEUTRAL_PRODUCT_COLOUR, template=0)


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
    from prompts.loading import load_prompt_model
    from prompts.brief import Brief
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


# -------------------------------------------------------------------------------------------- material classifier


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

    def renders(count, salt):
        rng = np.random.default_rng([seed, salt])
        images, masks, labels = [], [], []
        for _ in range(count):
            drawn = sample_attributes(rng)
            scene = render_scene(size=size, seed=int(rng.integers(2**31)), **drawn)
            images.append(np.asarray(scene.image))
            masks.append(np.asarray(scene.product_mask) < 128)
            labels.append(drawn["material"])
        return texture_features(np.stack(images), np.stack(masks)), np.array(labels)

    x, y = renders(n, 21)
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0)).fit(x, y)
    x_test, y_test = renders(max(120, n // 5), 22)
    return classifier, float((classifier.predict(x_test) == y_test).mean())


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
    rng = np.random.default_rng([seed, 23])
    images, masks, labels = [], [], []
    for _ in range(n):
        drawn = sample_attributes(rng)
        scene = render_scene(size=size, seed=int(rng.integers(2**31)), **drawn)
        images.append(np.asarray(scene.image))
        masks.append(np.asarray(scene.product_mask) < 128)
        labels.append(drawn["material"])
    features = texture_features(reconstruct(vae, np.stack(images)), np.stack(masks))
    return float(np.mean(classifier.predict(features) == np.array(labels)))


# ------------------------------------------------------------------------------------------------------ LoRA proof

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

    from studio.training.trainer import Components, FolderData, InpaintingTrainer, TrainConfig, encode_dataset

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


# --------------------------------------------------------------------------------------------------------- recipe


def train_mini(run: str | os.PathLike = "runs/studio-mini", export: str | os.PathLike | None = MODEL_FOLDER,
               recipe: MiniRecipe | None = None, threads: int = 1, progress: bool = True) -> dict:
    """Run (or resume) the whole studio-mini recipe; every stage skips what the run folder already holds.

    run: the run folder (data, VAE checkpoints, latent cache, UNet checkpoints, probes.jsonl, best/).
    export: where the best pipeline is copied at the end (None: do not export). Returns the run's report.
    threads: torch CPU threads; 1 by default because on a shared 2-core machine one thread trains several times
    faster than two that wait for each other.
    """
    import torch

    from studio.training.trainer import Components, EncodedData, InpaintingTrainer, TrainConfig, encode_dataset

    recipe = recipe or MiniRecipe()
    torch.set_num_threads(threads)
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    recipe_path = run / "recipe.json"
    # Everything but the UNet step budget must match: a resumed run may be given more steps.
    settings = json.loads(json.dumps({**asdict(recipe), "unet_steps": None}))
    if recipe_path.is_file() and {**json.loads(recipe_path.read_text()), "unet_steps": None} != settings:
        raise InputError(f"{run} was started with another recipe ({recipe_path}); resume with the same settings or "
                         "use a new --run folder")
    recipe_path.write_text(json.dumps(asdict(recipe), indent=1) + "\n")
    log = _Log(run / "log.jsonl", echo=progress)

    # 1. Data: a fixed seeded set of renders, and held-out renders for the VAE gate.
    data_path = run / "scenes.safetensors"
    if not data_path.is_file():
        SceneArrays.render(recipe.n_train, recipe.resolution, recipe.seed, set(recipe.held_out), progress,
                           recipe.prompt_style_captions).save(data_path)
        SceneArrays.render(recipe.n_heldout, recipe.resolution, recipe.seed + 1, set(recipe.held_out),
                           progress).save(run / "heldout.safetensors")
    scenes, heldout = SceneArrays.load(data_path), SceneArrays.load(run / "heldout.safetensors")
    pipeline = build_components(run / "components", recipe)

    # 2. VAE, gated on held-out PSNR, then frozen with its latent scaling factor.
    from diffusers import AutoencoderKL

    vae_final = run / "vae" / "final"
    if not vae_final.is_dir():
        state = train_vae(pipeline.vae, scenes.images, heldout.images, recipe, run / "vae", progress)
        scale = latent_scaling_factor(pipeline.vae, scenes.images[:1024])
        pipeline.vae.register_to_config(scaling_factor=scale)
        _save_atomically(pipeline.vae, vae_final)
        log.write(stage="vae", step=state["step"], psnr=state["psnr"][-1][1], scaling_factor=scale)
    pipeline.vae = AutoencoderKL.from_pretrained(vae_final)
    pipeline.register_modules(vae=pipeline.vae)

    # 3. Encode every scene once (frozen VAE + frozen random-init text encoder).
    cache_path = run / "encoded.safetensors"
    config = TrainConfig(
        steps=recipe.unet_steps, batch_size=recipe.unet_batch, learning_rate=recipe.unet_lr,
        warmup_steps=recipe.unet_warmup, caption_dropout=recipe.caption_dropout, snr_gamma=recipe.unet_snr_gamma,
        null_captions=null_captions(), ema_decay=recipe.unet_ema_decay, seed=recipe.seed,
        checkpoint_every=recipe.checkpoint_every, keep_checkpoints=2,
        mask_modes={"product": 0.8, "outpaint": 0.1, "random": 0.1})
    if not cache_path.is_file():
        encode_dataset(Components.from_pipeline(pipeline), scenes, config, progress=progress).save(cache_path)
    encoded = EncodedData.load(cache_path)

    # 4. The UNet, from scratch, probing colour and material adherence at every checkpoint (EMA weights) and keeping
    # the best pipeline by their mean; a tie goes to the later step.
    best_path = run / "best"
    best = _read_best(run)
    classifier = None

    def probe(trainer, step):
        nonlocal best, classifier
        started = time.perf_counter()
        if classifier is None:
            classifier = fit_material_classifier(n=600, size=recipe.resolution, seed=recipe.seed)[0]
        with trainer.averaged_weights() as unet:
            unet.eval()
            result = colour_adherence(pipeline, seeds=(0, 1), size=recipe.resolution, steps=recipe.inference_steps)
            result.update(material_adherence(pipeline, classifier, seeds=(0,), size=recipe.resolution,
                                             steps=recipe.inference_steps, colours=PROBE_COLOURS))
            result["score"] = (result["colour_adherence"] + result["material_adherence"]) / 2
            unet.train()
            loss = float(np.mean(trainer.losses_[-recipe.checkpoint_every:])) if trainer.losses_ else None
            log.write(stage="unet", step=step, loss=loss, probe_seconds=round(time.perf_counter() - started, 1),
                      **result)
            if best is None or result["score"] >= best.get("score", -1.0):
                best = {"step": step, **result}
                _save_atomically(pipeline, best_path)
                write_file(run / "best.json", lambda tmp: tmp.write_text(json.dumps(best, indent=1) + "\n"))

    trainer = InpaintingTrainer(pipeline, config)
    trainer.fit(encoded, run / "unet", resume=True, callback=probe, progress=progress)

    # 5. Export the best pipeline as the shipped model folder.
    if export is not None and best_path.is_dir():
        export_model(best_path, export)
        log.write(stage="export", folder=str(export), **(best or {}))
    return {"run": str(run), "best": best}


def _read_best(run: Path) -> dict | None:
    path = run / "best.json"
    return json.loads(path.read_text()) if path.is_file() and (run / "best").is_dir() else None


def export_model(source: str | os.PathLike, folder: str | os.PathLike = MODEL_FOLDER) -> Path:
    """Copy a studio-mini pipeline folder to `folder` (atomically), dropping anything but configs, tokenizer files
    and safetensors weights."""
    source, folder = Path(source), Path(folder)
    if not (source / "model_index.json").is_file():
        raise InputError(f"{source} is not a diffusers pipeline folder (no model_index.json)")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("*.bin", "*.pt", "*.pkl", "*.tmp"))
    return replace_folder(tmp, folder)


class _Log:
    """Append-only JSON-lines log of a run (one record per probe or stage)."""

    def __init__(self, path: Path, echo: bool):
        self.path, self.echo = path, echo

    def write(self, **record) -> None:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.echo:
            print(json.dumps(record), flush=True)


# ------------------------------------------------------------------------------------------------------------ gate


def evaluate_mini(model: str | os.PathLike = MODEL_FOLDER, steps: int = 30, guidance: float = 7.5, threads: int = 1,
                  colour_seeds: tuple[int, ...] = (0, 1, 2, 3), material_seeds: tuple[int, ...] = (0,),
                  latency_runs: int = 3, classifier_renders: int = 1800, progress: bool = True) -> dict:
    """The studio-mini quality gate (a benchmark, minutes on a CPU). Returns the measured figures and the goals.

    colour_adherence: 12 colours x colour_seeds on a neutral product (goal >= 0.9). prompt_model_colour_adherence:
    the same measure on prompts-mini's prompts for the reward-mini groups (no goal). material_adherence: 6 materials x
    12 colours x material_seeds, read by a classifier fitted on renders only (goal >= 0.7); material_ceiling: that
    classifier's accuracy on held-out renders; material_vae_ceiling: its accuracy on the VAE's reconstructions of
    renders (what any UNet on these latents can reach). lora_proof: `lora_word_proof`'s colour distances (0-255 RGB)
    before and after the LoRA. product_bit_exact: the product pixels of a 512x512 creative equal the
    input's. latency_s: median seconds per 512x512 creative (generate + upscale + paste back) at `steps` steps.
    steps and guidance default to what `studio generate` and the UI use (30, 7.5).
    peak_rss_mb: peak resident memory of this process before the LoRA proof, which trains.
    """
    import resource

    import torch
    from diffusers import AutoPipelineForInpainting

    from studio.imaging.canvas import place_product
    from studio.imaging.creatives import CreativeSettings, generate_creatives

    model = Path(model)
    if not (model / "model_index.json").is_file():
        raise InputError(f"{model} is not a diffusers pipeline folder; train one with `studio train-mini` first")
    torch.set_num_threads(threads)
    say = print if progress else (lambda *args, **kwargs: None)
    pipeline = AutoPipelineForInpainting.from_pretrained(model)
    size = pipeline.unet.config.sample_size * 2 ** (len(pipeline.vae.config.block_out_channels) - 1)
    report: dict = {"model": str(model), "native_size": size, "steps": steps, "guidance": guidance,
                    "threads": threads}

    say("colour adherence ...", flush=True)
    report.update(colour_adherence(pipeline, colour_seeds, size, steps, guidance))
    say("colour adherence on the prompt model's prompts ...", flush=True)
    report.update(prompt_model_adherence(pipeline, size=size, steps=steps, guidance=guidance))
    say("material classifier (renders only) ...", flush=True)
    classifier, report["material_ceiling"] = fit_material_classifier(n=classifier_renders, size=size)
    say("material adherence ...", flush=True)
    report["material_adherence"] = material_adherence(pipeline, classifier, material_seeds, size, steps,
                                                      guidance=guidance)["material_adherence"]

    report["material_vae_ceiling"] = vae_material_ceiling(pipeline.vae, classifier, size=size)
    say("512x512 creatives ...", flush=True)
    scene = neutral_scene(512, seed=0)
    prompt = "a bottle on a blue marble backdrop soft light studio shot"
    latencies, exact = [], True
    canvas = place_product(scene.image, np.asarray(scene.product_mask) > 127, size=512)
    settings = CreativeSettings(size=512, steps=steps, guidance=guidance)
    for run in range(latency_runs):
        started = time.perf_counter()
        creative = generate_creatives(scene.image, prompt, settings=settings, n=1, seed=run, engine=str(model),
                                      mask=scene.product_mask, progress=False)[0]
        latencies.append(time.perf_counter() - started)
        pixels = np.asarray(creative.image)
        exact &= bool(np.array_equal(pixels[canvas.keep], np.asarray(canvas.image)[canvas.keep]))
    report["product_bit_exact"] = exact
    report["latency_s"] = float(np.median(latencies[1:] if len(latencies) > 1 else latencies))
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    say("LoRA proof ...", flush=True)  # last: it trains, which would count in the generation's peak memory
    with tempfile.TemporaryDirectory() as scratch:
        proof = lora_word_proof(model, scratch)
    report["lora_proof"] = {"word": PROOF_WORD, "distance_before": proof["distance_before"],
                            "distance_after": proof["distance_after"]}
    report["goals"] = {"colour_adherence": 0.9, "material_adherence": 0.7, "latency_s": 2.0, "peak_rss_mb": 1536}
    report["passed"] = bool(report["colour_adherence"] >= 0.9 and report["material_adherence"] >= 0.7 and exact
                            and report["latency_s"] <= 2.0 and report["peak_rss_mb"] <= 1536)
    return report
