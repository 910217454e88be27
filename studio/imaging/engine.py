"""The diffusion engine: load any diffusers inpainting pipeline, then paint one image per seed.

`load_engine(model)` loads a pipeline folder, a hub id or a single-file checkpoint (`model.safetensors` with
`model_config=` a local folder of the same architecture). Stable Diffusion 1.5/2 inpainting, SDXL inpainting and FLUX
Fill run as inpainting models; a text-to-image model (a 4-channel UNet) runs through diffusers' mask blending, and
`Engine.inpaint_method` says which. Loaded pipelines are cached per (model, device, dtype, options). `Engine.generate`
is the one generation path; it reads top to bottom as numbered steps, like the diffusers pipelines it wraps.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from PIL import Image

import studio
from studio.core import hub
from studio.core.artefact import MANIFEST_NAME, PIPELINE_CLASS, PIPELINE_FORMAT, check_manifest
from studio.core.errors import InputError, ModelNotFoundError, StudioError
from studio.core.quiet import quiet_loading
from studio.imaging.prompt_reading import PromptReading, read_colours, read_prompt
from studio.imaging.provenance import weights_hash
from studio.imaging.tiny import RANDOM_INIT_MARKER, build_tiny_pipeline

# Scheduler names users pass -> diffusers scheduler class names (all built from the model's own scheduler config).
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
}
DTYPES = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
CPU_OFFLOAD = ("model", "sequential")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
DEFAULT_GUIDANCE = 7.5  # diffusers' inpainting default; a model may declare its own in studio.json
# How a pipeline paints the mask: a model trained for it, or a text-to-image model whose latents are blended back
INPAINTING_MODEL, MASK_BLENDING = "inpainting-model", "mask-blending"

RANDOM_INIT_NOTE = (
    "this generator is randomly initialised (its outputs are noise); use the embedded studio-mini "
    "(studio/models/studio-mini, rebuilt by `studio train-mini`) or pass --model with a real inpainting model"
)

# A cancel hook: an Event-like object with is_set(), or a callable that returns True to stop.
CancelHook = Any


class GenerationCancelled(StudioError):
    """The user cancelled a generation; nothing was written."""


@dataclass
class LoraSpec:
    """A LoRA to apply while generating: a weights file or folder (diffusers/PEFT format) and its strength."""

    path: str
    scale: float = 1.0

    def check(self) -> None:
        """Raise InputError for a scale no LoRA can be applied at (NaN would paint black and enter the recipe)."""
        try:
            scale = float(self.scale)
        except (TypeError, ValueError):
            raise InputError(f"LoRA scale must be a number, got {self.scale!r}") from None
        if not (math.isfinite(scale) and -10.0 <= scale <= 10.0):
            raise InputError(f"LoRA scale must be a finite number from -10 to 10, got {self.scale!r}")


@dataclass
class GenerationSettings:
    """Sampler settings for one generation. `scheduler=None` keeps the model's own scheduler, `guidance=None` the
    model's own guidance scale (`Engine.default_guidance`)."""

    steps: int = 30
    guidance: float | None = None
    strength: float = 1.0
    scheduler: str | None = None
    negative_prompt: str = ""
    # Personal conditions (studio.imaging.personal): a guidance scale per condition; 0 leaves it out.
    history_guidance: float = 0.0
    category_guidance: float = 0.0
    history_projection: str = "none"  # "perpendicular": the history cannot cancel the prompt (studio.imaging.personal)
    history_interval: float = 1.0  # history guidance only at noise levels up to this share of the schedule

    def check(self) -> None:
        """Raise InputError for settings no sampler can run."""
        from studio.imaging.personal import HISTORY_PROJECTIONS, check_interval, check_scale

        check_scale("history_guidance", self.history_guidance)
        check_scale("category_guidance", self.category_guidance)
        check_interval(self.history_interval)
        if self.history_projection not in HISTORY_PROJECTIONS:
            raise InputError(f"history_projection must be one of {', '.join(HISTORY_PROJECTIONS)}, got "
                             f"{self.history_projection!r}")
        if self.history_projection == "perpendicular" and float(self.history_guidance) > 0 and \
                self.guidance is not None and float(self.guidance) <= 1.0:
            raise InputError("history_projection perpendicular needs text guidance above 1 (it projects the history "
                             "against the text's direction); raise guidance or use history_projection none")
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise InputError(f"steps must be a whole number from 1 to 1000, got {self.steps!r}")
        if self.guidance is not None and not 0.0 <= float(self.guidance) <= 50.0:
            raise InputError(f"guidance must be between 0 and 50, got {self.guidance!r}")
        if not 0.0 < float(self.strength) <= 1.0:
            raise InputError(f"strength must be in (0, 1], got {self.strength!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise InputError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")


@dataclass(frozen=True)
class EngineOptions:
    """Memory and speed options; each one that is on appears in every recipe's `engine_options` line.

    attention_slicing: attention in slices (less peak memory at a small speed cost; same result up to rounding).
    vae_tiling:        the VAE encodes and decodes large canvases tile by tile (bounded memory; seams blended).
    cpu_offload:       "model" keeps only the running model on the GPU, "sequential" only the running layer
                       (smallest GPUs, slowest); both need a GPU device.
    channels_last:     convolution weights in channels-last memory order (faster convolutions on GPUs).
    compile:           `torch.compile` the denoiser (the first image pays the compile time).
    Attention runs through PyTorch's scaled_dot_product_attention (SDPA), diffusers' default on torch 2.
    """

    attention_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: str | None = None
    channels_last: bool = False
    compile: bool = False

    def check(self, device: str) -> None:
        if self.cpu_offload is not None and self.cpu_offload not in CPU_OFFLOAD:
            raise InputError(f"cpu_offload must be one of {', '.join(CPU_OFFLOAD)}, got {self.cpu_offload!r}")
        if self.cpu_offload is not None and device == "cpu":
            raise InputError("CPU offload moves models between a GPU and the CPU; it needs --device cuda (or mps)")

    def describe(self) -> str:
        """The recipe line: the options that are on, e.g. "vae-tiling,cpu-offload=model" ("" for none)."""
        parts = []
        for item in fields(self):
            value = getattr(self, item.name)
            name = item.name.replace("_", "-")
            if value is True:
                parts.append(name)
            elif value not in (False, None):
                parts.append(f"{name}={value}")
        return ",".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Device, dtype and the default model


def resolve_device(device: str = "auto") -> str:
    """'auto' picks cuda, then mps, then cpu; an explicit device must exist on this machine."""
    import torch

    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if device == "mps" and not has_mps:
        raise InputError("device 'mps' was asked for but Apple MPS is not available; use --device cpu or auto")
    return device


def resolve_dtype(device: str, dtype: str = "auto"):
    """'auto' means fp16 on a GPU and fp32 on the CPU. fp16 on the CPU is refused (its kernels are missing or slow)."""
    import torch

    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if dtype == "auto":
        dtype = "fp32" if device == "cpu" else "fp16"
    if dtype == "fp16" and device == "cpu":
        raise InputError("fp16 needs a GPU; on the CPU use --dtype fp32 (or bf16)")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]


def embedded_model_folder() -> Path:
    """Where the trained embedded model, studio-mini, ships inside the package."""
    return Path(studio.__file__).parent / "models" / "studio-mini"


def tiny_model_folder() -> Path:
    """The cache folder of the tiny random pipeline ($XDG_CACHE_HOME/creative-studio/tiny-random)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "creative-studio" / "tiny-random"


def default_model() -> str:
    """The model used when none is given: studio-mini if it ships, else the tiny random pipeline (built once)."""
    embedded = embedded_model_folder()
    if (embedded / "model_index.json").is_file():
        return str(embedded)
    folder = tiny_model_folder()
    if not (folder / "model_index.json").is_file():
        # Build beside the target and rename, so a crash or a concurrent builder never leaves a half pipeline.
        folder.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=".tiny-random-", dir=folder.parent))
        try:
            build_tiny_pipeline(building)
            os.replace(building, folder)
        except OSError:
            if not (folder / "model_index.json").is_file():
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return str(folder)


def is_random_init(model: str) -> bool:
    """True when `model` is a folder holding randomly initialised weights (the tiny pipeline)."""
    return (Path(model) / RANDOM_INIT_MARKER).is_file()


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _how_to_get(model: str) -> str:
    # `hf` is today's command; older huggingface_hub releases only ship `huggingface-cli`.
    return (
        f"on a machine with internet run `hf download {model}` (`huggingface-cli download {model}` with an older "
        f"huggingface_hub) and copy the cache over, or pass --model with a local pipeline folder"
    )


def _resolve_model(model: str) -> tuple[str, bool]:
    """Map a hub id or folder to what from_pretrained should read, and whether to stay offline."""
    resolved = hub.resolve_model(model, kind="diffusers pipeline", needs="model_index.json",
                                 how_to_get=_how_to_get(model))
    if resolved.is_local:  # a folder the studio wrote says what it holds: a LoRA or another artefact is refused here
        check_manifest(resolved.path_or_id, PIPELINE_CLASS, PIPELINE_FORMAT,
                       hint="pass a diffusers inpainting pipeline folder (LoRAs go to --lora)")
    return resolved.path_or_id, resolved.is_local


def is_single_file(model: str | None) -> bool:
    """Whether `model` names a single-file checkpoint (the original layout most model sites distribute)."""
    return model is not None and Path(str(model)).suffix.lower() in SINGLE_FILE_SUFFIXES


def _single_file_config(model: str, model_config: str | None) -> str:
    """The local diffusers folder that describes a single-file checkpoint's architecture (configs and tokenizers)."""
    if not Path(model).expanduser().is_file():
        raise ModelNotFoundError(f"checkpoint file {model!r} does not exist; check the path")
    if model_config is None:
        raise InputError(
            f"the single-file checkpoint {model!r} needs its architecture's configuration: pass --model-config with "
            "a local diffusers folder of the same architecture (model_index.json, component configs, tokenizers; "
            "weights not needed), e.g. fetched on a machine with internet by `hf download "
            "stable-diffusion-v1-5/stable-diffusion-inpainting --exclude '*.safetensors' '*.bin' '*.ckpt'`"
        )
    folder = Path(model_config).expanduser()
    if not (folder / "model_index.json").is_file():
        raise ModelNotFoundError(f"--model-config {model_config!r} is not a diffusers pipeline folder (no "
                                 "model_index.json in it); pass the folder of a pipeline of the same architecture")
    return str(folder)


def _listed(index: dict, name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and len(entry) == 2 and None not in entry


def check_components(folder: str) -> str:
    """Return a pipeline folder's class name; raise one clear error when a component it needs is missing."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
        if not isinstance(index, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as error:
        raise ModelNotFoundError(f"{folder}/model_index.json cannot be read ({str(error).splitlines()[0]}); "
                                 "copy the pipeline folder again") from None
    for name in index:
        if not name.startswith("_") and _listed(index, name) and not (Path(folder) / name).is_dir():
            raise ModelNotFoundError(f"{folder} has no {name}/ folder although its model_index.json lists a "
                                     f"{index[name][1]}; copy the whole pipeline folder, every subfolder included")
    if not _listed(index, "vae"):
        raise ModelNotFoundError(f"{folder} has no VAE (model_index.json lists none); an inpainting pipeline needs one "
                                 "to encode the photo and decode the result")
    return str(index.get("_class_name", ""))


def _pipeline_class(class_name: str):
    """The class that loads a folder as an inpainting pipeline: its own when it already paints masks, else Auto."""
    import diffusers

    own = getattr(diffusers, class_name, None) if class_name else None
    if own is not None and (class_name.endswith("InpaintPipeline") or class_name == "FluxFillPipeline"):
        return own  # AutoPipelineForInpainting has no mapping for FLUX Fill
    return diffusers.AutoPipelineForInpainting


def inpaint_method(pipeline, model: str) -> str:
    """INPAINTING_MODEL or MASK_BLENDING for a loaded pipeline; a denoiser that fits neither is one clear error."""
    unet = getattr(pipeline, "unet", None)
    denoiser = unet if unet is not None else getattr(pipeline, "transformer", None)
    if denoiser is None or getattr(pipeline, "vae", None) is None:
        missing = "VAE" if denoiser is not None else "UNet or transformer"
        raise ModelNotFoundError(f"the pipeline {model!r} has no {missing}; an inpainting pipeline needs one")
    inputs = int(denoiser.config.in_channels)
    outputs = int(getattr(denoiser.config, "out_channels", None) or inputs)
    if inputs == outputs:
        return MASK_BLENDING  # a text-to-image model: the pipeline blends the kept latents back after every step
    if (unet is not None and inputs == 2 * outputs + 1) or (unet is None and inputs > outputs):
        return INPAINTING_MODEL  # extra input channels carry the mask and the masked image (FLUX Fill packs them)
    raise ModelNotFoundError(
        f"the UNet of {model!r} takes {inputs} input channels: an inpainting UNet takes {2 * outputs + 1} ({outputs} "
        f"latents, 1 mask, {outputs} masked-image latents) and a text-to-image UNet {outputs}; it fits neither"
    )


def _cached_snapshot(model: str) -> str | None:
    """The local snapshot folder of a hub model that from_pretrained has just fetched (to hash its weights)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model, local_files_only=True)
    except Exception:  # noqa: BLE001 - no snapshot only means no weights hash in the recipe
        return None


def model_weights_hash(model: str | None = None) -> str | None:
    """The weights hash `load_engine(model)` records in every recipe, without loading the pipeline."""
    model = model or default_model()
    if is_single_file(model) and Path(model).expanduser().is_file():
        return weights_hash(Path(model).expanduser())
    source, _ = _resolve_model(model)
    folder = source if Path(source).is_dir() else _cached_snapshot(model)
    return weights_hash(folder) if folder is not None else None


def declared_guidance(manifest: dict) -> float:
    """The guidance scale a model folder's studio.json declares (the scale it was chosen at), else DEFAULT_GUIDANCE."""
    guidance = manifest.get("guidance", DEFAULT_GUIDANCE)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0.0 <= guidance <= 50.0:
        raise ModelNotFoundError(f"studio.json declares guidance {guidance!r}; it must be a number from 0 to 50")
    return float(guidance)


def model_guidance(model: str | None = None) -> float:
    """The guidance scale `load_engine(model)` paints at when the settings leave it to the model, without loading
    the pipeline."""
    model = model or default_model()
    if is_single_file(model):
        return DEFAULT_GUIDANCE
    source, _ = _resolve_model(model)
    folder = Path(source)
    return declared_guidance(check_manifest(folder, PIPELINE_CLASS, PIPELINE_FORMAT) if folder.is_dir() else {})


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Network and hub errors that mean "could not fetch this model" (httpx is what huggingface_hub speaks)."""
    from huggingface_hub.errors import HfHubHTTPError

    errors: tuple[type[BaseException], ...] = (HfHubHTTPError,)
    try:
        import httpx

        errors += (httpx.HTTPError,)
    except ImportError:
        pass
    return errors


class Engine:
    """A loaded inpainting pipeline plus what provenance needs to know about it.

    Attributes:
        pipeline: the diffusers pipeline (its own progress bar is off; callers show progress per image).
        model: the id, folder or checkpoint file it was loaded from; `weights_hash`: SHA-256 of its weight files
            (None if unknown).
        random_init: True for randomly initialised weights (outputs are noise).
        native_size: the side length in pixels the model was trained at (e.g. 512 for SD 1.5).
        size_multiple: width and height passed to the pipeline must be multiples of this many pixels.
        inpaint_method: INPAINTING_MODEL, or MASK_BLENDING for a text-to-image model.
        options: the memory and speed options it was loaded with.
    """

    def __init__(self, pipeline, model: str, *, folder: str | None, device: str, dtype,
                 weights: str | None = None, options: EngineOptions | None = None):
        self.pipeline = pipeline
        self.model = model
        self.device = device
        self.dtype = dtype
        self.options = options or EngineOptions()
        self.random_init = folder is not None and is_random_init(folder)
        weights = weights or folder
        self.weights_hash = weights_hash(weights) if weights is not None else None
        self.inpaint_method = inpaint_method(pipeline, model)
        self.default_scheduler = pipeline.scheduler
        scale = int(getattr(pipeline, "vae_scale_factor", 8))
        unet = getattr(pipeline, "unet", None)
        latent_side = unet.config.sample_size if unet is not None else getattr(pipeline, "default_sample_size", 128)
        if isinstance(latent_side, (tuple, list)):
            latent_side = max(latent_side)
        self.native_size = int(latent_side) * scale
        self.size_multiple = scale * 2  # FLUX packs 2x2 latents; SD is happy with it too
        self._lora_names: dict[str, str] = {}
        self._call_parameters = set(inspect.signature(pipeline.__call__).parameters)
        self._lock = threading.Lock()  # one generation at a time: the scheduler and LoRA state are shared
        self._embeddings: dict[str, Any] = {}
        self._personal = PersonalAdapters(self)
        # a closed vocabulary (studio-mini) reads only the words it learned, closed colours (v2) only the colours it
        # learned (studio.imaging.prompt_reading)
        manifest = check_manifest(folder, PIPELINE_CLASS, PIPELINE_FORMAT) if folder and Path(folder).is_dir() else {}
        self.closed_vocabulary = manifest.get("vocabulary") == "closed"
        self.closed_colours = manifest.get("vocabulary") == "closed-colours"
        self.default_guidance = declared_guidance(manifest)
        self._known_words: dict[str, bool] = {}

    # ---------------------------------------------------------------------------------------------------------------
    def resolve(self, settings: GenerationSettings) -> GenerationSettings:
        """`settings` with the model's own guidance scale where they leave it to the model (None)."""
        return settings if settings.guidance is not None else replace(settings, guidance=self.default_guidance)

    def check_prompt(self, prompt: str, *, name: str = "prompt", allow_empty: bool = False) -> None:
        """Raise InputError for an empty prompt or one longer than the text encoder reads (77 tokens for CLIP)."""
        if not isinstance(prompt, str):
            raise InputError(f"{name} must be text, got {type(prompt).__name__}")
        if not prompt.strip():
            if allow_empty:
                return
            raise InputError(f"{name} is empty; describe the scene to paint, e.g. 'a red marble table, soft light'")
        reading = self.read_prompt(prompt)
        if self.closed_vocabulary and not allow_empty and not any(character.isalpha() for character in reading.text):
            raise InputError(f"{name} has no word this model knows ({', '.join(reading.dropped)} left out); "
                             "name a colour, a material and a light, e.g. 'a teal marble backdrop, soft light'")
        counted = self.count_tokens(reading.text)
        if counted is not None and counted[0] > counted[1]:
            count, limit = counted
            raise InputError(
                f"{name} is {count} tokens long (with start and end tokens); the model reads at most {limit}, "
                f"so shorten it by {count - limit} tokens"
            )

    def count_tokens(self, text: str) -> tuple[int, int] | None:
        """(tokens with start and end, the most it reads) of `text` for the text encoder that reads the most (CLIP 77
        for SD and SDXL; T5 for FLUX and SD3); None when no encoder has a limit."""
        tokenizers = [getattr(self.pipeline, attr, None) for attr in ("tokenizer", "tokenizer_2", "tokenizer_3")]
        tokenizers = [t for t in tokenizers if t is not None and t.model_max_length < 100_000]  # 1e30 = no limit
        if not tokenizers:
            return None
        tokenizer = max(tokenizers, key=lambda t: t.model_max_length)
        return len(tokenizer(text, truncation=False).input_ids), int(tokenizer.model_max_length)

    def read_prompt(self, prompt: str) -> PromptReading:
        """What the model reads of `prompt`: as typed, unless its vocabulary or its colours are closed (see
        studio.imaging.prompt_reading: unknown words left out, colour names mapped to the vocabulary's colours)."""
        if self.closed_vocabulary:
            return read_prompt(prompt, self._knows)
        if self.closed_colours:
            return read_colours(prompt)
        return PromptReading(prompt, prompt)

    def _knows(self, word: str) -> bool:
        """Whether the tokenizer holds `word` whole (one token that ends a word)."""
        known = self._known_words.get(word)
        if known is None:
            tokens = self.pipeline.tokenizer.tokenize(word)
            known = self._known_words[word] = len(tokens) == 1 and tokens[0].endswith("</w>")
        return known

    def _scheduler(self, name: str | None):
        if name is None:
            return self.default_scheduler
        import diffusers

        return getattr(diffusers, SCHEDULERS[name]).from_config(self.default_scheduler.config)

    def _apply_lora(self, lora: LoraSpec | None) -> None:
        pipeline = self.pipeline
        if lora is None:
            if self._lora_names:
                pipeline.disable_lora()
            return
        source = Path(lora.path).expanduser()
        if not source.exists():
            raise InputError(f"LoRA {lora.path!r} does not exist; pass a LoRA weights file or folder")
        key = str(source.resolve())
        if key not in self._lora_names:
            name = f"lora{len(self._lora_names)}"
            try:
                if source.is_file():
                    pipeline.load_lora_weights(str(source.parent), weight_name=source.name, adapter_name=name)
                else:
                    pipeline.load_lora_weights(str(source), adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise InputError(f"could not load LoRA {lora.path!r} into {self.model!r}: {reason}") from None
            self._lora_names[key] = name
        pipeline.enable_lora()
        pipeline.set_adapters([self._lora_names[key]], adapter_weights=[float(lora.scale)])

    def generate(
        self,
        image: Image.Image,
        mask_image: Image.Image,
        *,
        prompt: str,
        seed: int,
        settings: GenerationSettings | None = None,
        lora: LoraSpec | None = None,
        cancel: CancelHook | None = None,
        history: Any = None,
        category: str | None = None,
        history_adapter: str | None = None,
    ) -> Image.Image:
        """Paint the white part of `mask_image` into `image` and return the painted picture.

        Args:
            image: PIL RGB at the model size (width and height multiples of `size_multiple`).
            mask_image: PIL "L" of the same size; 255 = paint, 0 = keep.
            prompt: the scene description.
            seed: seeds a CPU torch.Generator: equal seeds give equal pixels on one machine, and the same starting
                noise on any device.
            settings: steps, guidance, strength, scheduler, negative prompt.
            lora: a LoRA to apply at a scale, or None for the bare model.
            cancel: an Event-like (`is_set()`) or a callable returning True; checked after every denoising step.
            history: the creatives a group clicked (`studio.imaging.personal.History`, a folder or a list of images),
                guided by `settings.history_guidance`; category: a product category, guided by
                `settings.category_guidance`; history_adapter: the adapter folder (None: the model's default, see
                `history_method`). A scale of 0 or an absent condition adds no UNet pass.

        Returns:
            PIL RGB of the same size as `image`.

        Raises:
            InputError for bad prompts or settings, GenerationCancelled when `cancel` fires.
        """
        import torch

        settings = self.resolve(settings or GenerationSettings())
        # 1. Check inputs
        settings.check()
        if lora is not None:
            lora.check()
        self.check_prompt(prompt)
        self.check_prompt(settings.negative_prompt, name="negative prompt", allow_empty=True)
        if image.size != mask_image.size:
            raise InputError(f"image {image.size} and mask {mask_image.size} must be the same size")
        width, height = image.size
        if width % self.size_multiple or height % self.size_multiple:
            raise InputError(f"model size {image.size} must be multiples of {self.size_multiple} pixels")

        # 2. Define call parameters: a CPU generator makes a seed mean the same noise everywhere
        generator = torch.Generator("cpu").manual_seed(int(seed))
        kwargs: dict[str, Any] = dict(
            prompt=self.read_prompt(prompt).text,
            image=image.convert("RGB"),
            mask_image=mask_image.convert("L"),
            height=height,
            width=width,
            num_inference_steps=settings.steps,
            guidance_scale=float(settings.guidance),
            strength=float(settings.strength),
            negative_prompt=self.read_prompt(settings.negative_prompt).text or None,
            num_images_per_prompt=1,
            generator=generator,
        )

        # 3. Cancel hook: raising from the step callback stops the denoising loop at once
        def on_step_end(pipeline, step, timestep, callback_kwargs):
            stop = cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())
            if stop:
                raise GenerationCancelled("generation cancelled; nothing was written")
            return callback_kwargs

        if cancel is not None:
            kwargs["callback_on_step_end"] = on_step_end
        # Pipelines differ (FLUX Fill has no negative prompt): pass only what this one takes.
        kwargs = {key: value for key, value in kwargs.items() if key in self._call_parameters and value is not None}

        with self._lock:
            # 4. Scheduler, LoRA and personal conditions (extra UNet passes per condition) for this call
            self.pipeline.scheduler = self._scheduler(settings.scheduler)
            self._apply_lora(lora)
            guidance = self._personal.guidance(kwargs, settings, history=history, category=category,
                                               adapter=history_adapter)

            # 5. Denoise and decode
            with torch.inference_mode(), guidance:
                result = self.pipeline(**kwargs)
        return result.images[0]

    def history_method(self, history_adapter: str | None = None) -> str | None:
        """How a history conditions this model: "latent-channels" (studio-mini's PersonalConditioner),
        "ip-adapter", or None when it has no history adapter (then a history is refused)."""
        return self._personal.method(history_adapter)

    # ---------------------------------------------------------------------------------------------------------------
    def can_batch(self, settings: GenerationSettings | None = None) -> bool:
        """Whether `generate_many` paints several prompts in one pipeline call (else it loops over `generate`).

        Only a Stable Diffusion inpainting pipeline (9-channel UNet, plain KL VAE) at strength 1.0 takes precomputed
        noise and masked-image latents, which is what lets a batch reproduce each single call's random draws.
        """
        settings = settings or GenerationSettings()
        pipeline = self.pipeline
        unet = getattr(pipeline, "unet", None)
        vae = getattr(pipeline, "vae", None)
        if self._personal.ip_adapter_loaded:  # every call then needs image embeddings: one `generate` per image
            return False
        return (type(pipeline).__name__ == "StableDiffusionInpaintPipeline" and unet is not None
                and unet.config.in_channels == 9 and type(vae).__name__ == "AutoencoderKL"
                and float(settings.strength) == 1.0)

    def prepare_canvas(self, image: Image.Image, mask_image: Image.Image) -> "PreparedCanvas":
        """Run the VAE encoder over the masked canvas once, for every prompt and seed painted on it."""
        import torch

        pipeline = self.pipeline
        width, height = image.size
        prepared = PreparedCanvas(image.convert("RGB"), mask_image.convert("L"))
        if not self.can_batch():
            return prepared
        with self._lock, torch.inference_mode():
            # The pipeline's own step 5 and 7, as it runs them for one image
            init_image = pipeline.image_processor.preprocess(prepared.image, height=height, width=width)
            init_image = init_image.to(dtype=torch.float32)
            condition = pipeline.mask_processor.preprocess(prepared.mask_image, height=height, width=width)
            masked = (init_image * (condition < 0.5)).to(device=self.device, dtype=self.dtype)
            prepared.latent_dist = pipeline.vae.encode(masked).latent_dist
        return prepared

    def _embedding(self, text: str):
        """A text's CLIP embedding, computed once per text (prompts repeat across placements, negatives everywhere)."""
        import torch

        cached = self._embeddings.get(text)
        if cached is None:
            with torch.inference_mode():
                cached, _ = self.pipeline.encode_prompt(text, self.device, 1, False)
            if len(self._embeddings) > 4096:  # a bound: a long job must not grow memory without end
                self._embeddings.clear()
            self._embeddings[text] = cached
        return cached

    def generate_many(
        self,
        prepared: "PreparedCanvas",
        *,
        prompts: list[str],
        negative_prompts: list[str],
        seeds: list[int],
        settings: GenerationSettings | None = None,
    ) -> list[Image.Image]:
        """Paint one image per (prompt, negative prompt, seed) on one prepared canvas, in one pipeline call.

        Each image equals what `generate` makes for its own prompt and seed: the noise and the masked-image latent
        sample are drawn from each image's own generator in the order the pipeline draws them for a single image.
        Pipelines that cannot take those inputs (see `can_batch`) fall back to one `generate` per image.
        """
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        settings = self.resolve(settings or GenerationSettings())
        # 1. Check inputs
        if not (len(prompts) == len(negative_prompts) == len(seeds)) or not prompts:
            raise InputError("generate_many needs as many prompts, negative prompts and seeds, at least one")
        settings.check()
        for prompt, negative in zip(prompts, negative_prompts):
            self.check_prompt(prompt)
            self.check_prompt(negative, name="negative prompt", allow_empty=True)
        width, height = prepared.image.size
        if width % self.size_multiple or height % self.size_multiple:
            raise InputError(f"model size {prepared.image.size} must be multiples of {self.size_multiple} pixels")
        if not self.can_batch(settings) or prepared.latent_dist is None:
            return [self.generate(prepared.image, prepared.mask_image, prompt=prompt, seed=seed,
                                  settings=replace(settings, negative_prompt=negative))
                    for prompt, negative, seed in zip(prompts, negative_prompts, seeds)]

        # 2. Each image's random draws, in the single call's order: the initial noise, then the masked-image sample
        pipeline = self.pipeline
        scale = pipeline.vae_scale_factor
        shape = (1, pipeline.vae.config.latent_channels, height // scale, width // scale)
        dist = prepared.latent_dist
        generators, noises, masked = [], [], []
        for seed in seeds:
            generator = torch.Generator("cpu").manual_seed(int(seed))
            noises.append(randn_tensor(shape, generator=generator, device=torch.device(self.device), dtype=self.dtype))
            sample = dist.mean + dist.std * randn_tensor(dist.mean.shape, generator=generator,
                                                        device=dist.mean.device, dtype=dist.mean.dtype)
            masked.append(pipeline.vae.config.scaling_factor * sample)
            generators.append(generator)  # ancestral schedulers keep drawing from it, per image

        with self._lock:
            # 3. Scheduler, and the text embeddings (cached per text)
            pipeline.scheduler = self._scheduler(settings.scheduler)
            self._apply_lora(None)
            positive = torch.cat([self._embedding(self.read_prompt(text).text) for text in prompts])
            negative = torch.cat([self._embedding(self.read_prompt(text).text) for text in negative_prompts])

            # 4. Denoise and decode the whole batch
            with torch.inference_mode():
                result = pipeline(
                    prompt_embeds=positive, negative_prompt_embeds=negative, image=prepared.image,
                    mask_image=prepared.mask_image, masked_image_latents=torch.cat(masked), latents=torch.cat(noises),
                    height=height, width=width, num_inference_steps=settings.steps,
                    guidance_scale=float(settings.guidance), strength=1.0, generator=generators,
                )
        return list(result.images)


class PersonalAdapters:
    """The history adapters loaded into one engine, and the guidance context of one generation (see
    studio.imaging.personal)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.conditioners: dict[str, Any] = {}  # folder -> PersonalConditioner hooked into the UNet
        self.ip_adapter: str | None = None  # the IP-Adapter folder loaded into the pipeline
        self._hooked: Any = None

    @property
    def ip_adapter_loaded(self) -> bool:
        return self.ip_adapter is not None

    def default_adapter(self) -> str | None:
        """The history adapter shipped beside a model: `<model>-personal/` next to its folder, or `personal/` in it."""
        folder = Path(str(self.engine.model)).expanduser()
        for candidate in (folder.parent / f"{folder.name}-personal", folder / "personal"):
            if (candidate / "config.json").is_file() or (candidate / "ip-adapter.safetensors").is_file():
                return str(candidate)
        return None

    def method(self, adapter: str | None) -> str | None:
        from studio.imaging.personal import adapter_kind

        adapter = adapter or self.default_adapter()
        return None if adapter is None else adapter_kind(adapter)

    def guidance(self, kwargs: dict, settings: GenerationSettings, *, history, category, adapter):
        """Fill `kwargs` for the pipeline call and return the context that adds the conditions' UNet passes."""
        from studio.imaging import personal

        personal.check_category(category)
        s_hist = float(settings.history_guidance) if history is not None else 0.0
        s_cat = float(settings.category_guidance) if category is not None else 0.0
        cfg = float(settings.guidance) > 1.0
        unet = getattr(self.engine.pipeline, "unet", None)
        needs = s_hist > 0 or s_cat > 0
        if needs and unet is None:
            raise InputError("personal conditions need a UNet pipeline (Stable Diffusion 1.5/2, SDXL or studio-mini); "
                             f"{type(self.engine.pipeline).__name__} has a transformer")
        kind = None
        if needs:
            adapter = adapter or self.default_adapter()
            if adapter is None:
                raise InputError(f"{self.engine.model} has no history adapter: pass history_adapter (--history-adapter)"
                                 " with a PersonalConditioner folder (studio-mini) or an IP-Adapter folder")
            kind = personal.adapter_kind(adapter)
        steps: list = []
        if kind == personal.MINI_ADAPTER and self.ip_adapter_loaded:
            # an earlier call's IP-Adapter would take this call's history: a conditioner was asked for
            self.engine.pipeline.unload_ip_adapter()
            self.ip_adapter = None
        if kind == personal.IP_ADAPTER or self.ip_adapter_loaded:
            if kind == personal.IP_ADAPTER:
                self._load_ip_adapter(adapter)
            steps = self._ip_steps(kwargs, history if s_hist > 0 else None, category, s_hist, s_cat, cfg)
        elif needs:
            steps = self._mini_steps(kwargs, adapter, history if s_hist > 0 else None, category, s_hist, s_cat)
        if not steps:
            return contextlib.nullcontext()
        for step in steps:
            if step.name == "history":
                # settings.check: perpendicular only with text guidance (cfg)
                step.perpendicular = settings.history_projection == "perpendicular"
                if float(settings.history_interval) < 1.0:
                    step.until = float(settings.history_interval) * self._schedule_length()
        return personal.personal_guidance(unet, steps, float(settings.guidance), cfg)

    def _schedule_length(self) -> float:
        """The timestep of pure noise: the scheduler's training steps (flow-matching schedulers use 1000 too)."""
        return float(getattr(self.engine.pipeline.scheduler.config, "num_train_timesteps", 1000))

    # -- studio-mini: the PersonalConditioner ----------------------------------------------------------------------
    def _conditioner(self, adapter: str):
        from studio.imaging.personal import load_conditioner

        key = str(Path(adapter).expanduser().resolve())
        if key not in self.conditioners:
            conditioner = load_conditioner(key).to(device=self.engine.device, dtype=self.engine.dtype)
            if self._hooked is not None:
                for handle in self._hooked:
                    handle.remove()
            self._hooked = conditioner.hook(self.engine.pipeline.unet)
            self.conditioners = {key: conditioner}  # one hooked at a time
        return self.conditioners[key]

    def _mini_steps(self, kwargs, adapter, history, category, s_hist, s_cat) -> list:
        from studio.imaging import personal

        conditioner = self._conditioner(adapter)
        category_ids = personal.category_index(category).to(self.engine.device) if category is not None else None
        steps = []
        if s_cat > 0:
            steps.append(personal.ConditionStep("category", s_cat, lambda: conditioner.conditions(category=category_ids)))
        if s_hist > 0:
            history = personal.load_history(history)
            pooled = personal.pooled_history_latent(self.engine.pipeline.vae, history, (kwargs["width"],
                                                    kwargs["height"]), device=self.engine.device,
                                                    dtype=self.engine.dtype)
            both = category_ids if s_cat > 0 else None
            steps.append(personal.ConditionStep("history", s_hist,
                                                lambda: conditioner.conditions(history=pooled, category=both)))
        return steps

    # -- diffusers models: IP-Adapter image prompts ----------------------------------------------------------------
    def _load_ip_adapter(self, adapter: str) -> None:
        key = str(Path(adapter).expanduser().resolve())
        if self.ip_adapter == key:
            return
        pipeline = self.engine.pipeline
        if self.ip_adapter is not None:
            pipeline.unload_ip_adapter()
        try:
            with quiet_loading():
                pipeline.load_ip_adapter(key, subfolder="", weight_name="ip-adapter.safetensors",
                                         image_encoder_folder="image_encoder", local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"could not load the IP-Adapter {adapter!r} into {self.engine.model!r}: {reason}") from None
        pipeline.image_encoder.to(device=self.engine.device, dtype=self.engine.dtype)
        self.ip_adapter = key

    def _image_embedding(self, history):
        """The history's mean CLIP image embedding (weighted), (1, 1, D)."""
        import torch

        from studio.imaging.personal import load_history

        history = load_history(history)
        pipeline = self.engine.pipeline
        pixels = pipeline.feature_extractor(history.images, return_tensors="pt").pixel_values
        with torch.inference_mode():
            embeds = pipeline.image_encoder(pixels.to(self.engine.device, self.engine.dtype)).image_embeds
        weights = torch.from_numpy(history.normalised_weights()).to(embeds.device, embeds.dtype)
        return (embeds * weights[:, None]).sum(dim=0)[None, None]

    def _ip_steps(self, kwargs, history, category, s_hist, s_cat, cfg) -> list:
        import torch

        from studio.imaging import personal

        pipeline = self.engine.pipeline
        dim = int(pipeline.image_encoder.config.projection_dim)
        # The base passes see no image: zero embeddings at IP-Adapter scale 0 add exactly nothing.
        zeros = torch.zeros((2 if cfg else 1, 1, dim), device=self.engine.device, dtype=self.engine.dtype)
        kwargs["ip_adapter_image_embeds"] = [zeros]
        pipeline.set_ip_adapter_scale(0.0)
        steps = []
        if s_cat > 0:
            if type(pipeline).__name__.startswith("StableDiffusionXL"):  # two text encoders and a pooled embedding
                raise InputError("the category condition through an IP-Adapter runs on SD 1.5/2 pipelines; on SDXL "
                                 "leave category_guidance at 0")
            text = f"{kwargs['prompt']}, {category}"
            self.engine.check_prompt(text, name="prompt with the category")
            embedding = self.engine._embedding(text)
            steps.append(personal.ConditionStep(
                "category", s_cat, kwargs=lambda call: {**call, "encoder_hidden_states": embedding}))
        if s_hist > 0:
            image = self._image_embedding(history)

            @contextlib.contextmanager
            def on():
                pipeline.set_ip_adapter_scale(1.0)
                try:
                    yield
                finally:
                    pipeline.set_ip_adapter_scale(0.0)

            def with_image(call):
                added = dict(call.get("added_cond_kwargs") or {})
                added["image_embeds"] = [image]
                return {**call, "added_cond_kwargs": added}

            steps.append(personal.ConditionStep("history", s_hist, enter=on, kwargs=with_image))
        return steps


@dataclass
class PreparedCanvas:
    """A canvas at the model size plus its VAE encoding (None when the engine cannot reuse one)."""

    image: Image.Image
    mask_image: Image.Image
    latent_dist: Any = None


_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def _manifest_stamp(model: str) -> tuple[int, int] | None:
    """A local folder's studio.json (size, mtime): an engine cached before it changed (a new declared guidance or
    vocabulary) is not reused."""
    try:
        stat = (Path(model).expanduser() / MANIFEST_NAME).stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def _apply_options(pipeline, options: EngineOptions, device: str) -> None:
    """Put the pipeline on its device with the memory and speed options on."""
    import torch

    if options.attention_slicing:
        if not hasattr(pipeline, "enable_attention_slicing"):
            raise InputError(f"{type(pipeline).__name__} has no attention slicing; leave the option off")
        pipeline.enable_attention_slicing()
    if options.vae_tiling:
        pipeline.vae.enable_tiling()
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    if options.channels_last:
        for module in (getattr(pipeline, "unet", None), pipeline.vae):
            if module is not None:  # convolutions benefit; FLUX's transformer has none
                module.to(memory_format=torch.channels_last)
    if options.cpu_offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif options.cpu_offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    else:
        pipeline.to(device)
    if options.compile:
        denoiser.compile()  # in place: the pipeline keeps its module (and its config)


def _load_pipeline(model: str, *, model_config: str | None, device: str, dtype: str):
    """Load `model` as an inpainting pipeline; return it, its torch dtype, its local folder (or None) and its
    weights file or folder."""
    import diffusers

    single_file = is_single_file(model)
    if single_file:
        source, local_only = _single_file_config(model, model_config), True
    else:
        source, local_only = _resolve_model(model)
    class_name = check_components(source) if Path(source).is_dir() else ""
    if dtype == "auto" and device != "cpu" and class_name.startswith("Flux"):
        dtype = "bf16"  # FLUX's T5 encoder overflows in fp16
    torch_dtype = resolve_dtype(device, dtype)
    with warnings.catch_warnings(), quiet_loading():
        # diffusers >= 0.36 renames torch_dtype to dtype; older releases only know torch_dtype.
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        try:
            if single_file:
                own = getattr(diffusers, class_name, None)
                if own is None or not hasattr(own, "from_single_file"):
                    raise ModelNotFoundError(f"{class_name or 'this pipeline'} in {source} cannot load single-file "
                                             "checkpoints; convert the checkpoint to a diffusers folder")
                pipeline = own.from_single_file(str(Path(model).expanduser()), config=source, local_files_only=True,
                                                torch_dtype=torch_dtype)
                if _pipeline_class(class_name) is diffusers.AutoPipelineForInpainting:
                    pipeline = diffusers.AutoPipelineForInpainting.from_pipe(pipeline)
            else:
                pipeline = _pipeline_class(class_name).from_pretrained(source, torch_dtype=torch_dtype,
                                                                       local_files_only=local_only)
        except (OSError, ValueError, KeyError, *_hub_errors()) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            if single_file:
                raise ModelNotFoundError(f"could not load the checkpoint {model} with the configuration in {source}: "
                                         f"{reason}") from None
            if local_only and Path(source).is_dir():
                raise ModelNotFoundError(f"could not load the pipeline in {source}: {reason}") from None
            raise ModelNotFoundError(
                f"diffusers pipeline {model!r} could not be downloaded; {_how_to_get(model)}"
            ) from None
    if single_file:
        return pipeline, torch_dtype, source, str(Path(model).expanduser())
    folder = source if Path(source).is_dir() else _cached_snapshot(model)
    return pipeline, torch_dtype, folder, folder


def load_engine(model: str | None = None, *, device: str = "auto", dtype: str = "auto",
                options: EngineOptions | None = None, model_config: str | None = None) -> Engine:
    """Load (once) an inpainting pipeline; later calls with the same arguments reuse it.

    Args:
        model: a pipeline folder, a hub id, or a single-file checkpoint (.safetensors/.ckpt, original layout) read
            with the configuration in the local folder `model_config`. None uses `default_model()`.
        device, dtype: see `resolve_device` and `resolve_dtype`; "auto" is bf16 for FLUX on a GPU.
        options: memory and speed options (attention slicing, VAE tiling, CPU offload, channels-last, compile).

    HF_HUB_OFFLINE is respected; folders and files never touch the network. A model that is not available locally
    raises ModelNotFoundError saying how to get it; a folder missing a component, or whose denoiser is neither an
    inpainting nor a text-to-image one, raises it saying what is wrong.
    """
    model = model or default_model()
    device = resolve_device(device)
    resolve_dtype(device, dtype)  # a bad dtype fails before anything loads
    options = options or EngineOptions()
    options.check(device)
    key = (model, device, dtype, options, model_config, _manifest_stamp(model))
    with _engines_lock:
        if key in _engines:
            return _engines[key]
        pipeline, torch_dtype, folder, weights = _load_pipeline(model, model_config=model_config, device=device,
                                                                dtype=dtype)
        _apply_options(pipeline, options, device)
        pipeline.set_progress_bar_config(disable=True)
        engine = Engine(pipeline, model, folder=folder, device=device, dtype=torch_dtype, weights=weights,
                        options=options)
        _engines[key] = engine
        return engine
