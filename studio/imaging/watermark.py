"""An invisible watermark in a creative's background: 64 bits that survive JPEG, resizing and cropping.

The mark is a spread-spectrum pattern added to the luminance of the painted background only (the product's pixels
are never touched). It is a 128 x 128 pixel tile, repeated over the image, made of 4 x 4 pixel "chips" of +-2 grey
levels: a quarter of the chips are a fixed sync pattern, the rest carry the 64 payload bits (12 chips per bit per tile,
in a fixed random arrangement). Because the tile repeats, the reader folds the whole image onto one tile (summing
every tile's worth of pixels, each weighted by the inverse of its local contrast so that texture does not drown the
mark), which adds up the signal of every tile while the picture itself averages out; a crop only
shifts the tile (found by correlating with the sync pattern over every cyclic shift at once, with an FFT), and a
resize is undone by trying a few scales and keeping the one whose sync peak stands out most.

The key is a fixed constant: the mark is a disclosure ("this was generated, here is its id"), not a secret. Anyone with
this code can read it, and a determined attacker can remove it; the signed C2PA manifest is the tamper-proof part.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from studio.core.errors import InputError

PAYLOAD_BITS = 64
TILE = 128  # pixels; the pattern repeats with this period
CHIP = 4  # pixels per chip side: coarse enough to survive JPEG 8x8 quantisation and a 50 % downscale
AMPLITUDE = 2  # grey levels added or removed: background PSNR ~42 dB
CHIPS = TILE // CHIP  # chips per tile side
SYNC_CHIPS = CHIPS * CHIPS // 4
CHIPS_PER_BIT = (CHIPS * CHIPS - SYNC_CHIPS) // PAYLOAD_BITS
MIN_SIDE = 256  # pixels: below this the mark would not survive a 50 % resize
MIN_BACKGROUND = 2 * TILE * TILE  # painted pixels needed to carry the mark
# Scales the reader undoes (the query's size over the original's): platforms resize to these most often.
SCALES = (1.0, 0.5, 0.75, 2 / 3, 0.8, 0.9, 0.6, 1.25, 1.5, 2.0)
DETECTION_Z = 6.0  # sync peak in standard deviations above the other shifts; noise alone stays below ~5
# The marker reads its own work back and refuses a mark that would not survive JPEG or a resize: the sync peak must
# stand out this much (treatments cost ~2-4), every bit must read right, and the bits' mean signal-to-noise ratio
# must reach EMBED_SNR (3: ~0.1 % of bits wrong; the 1024 px benchmark scenes measure ~8).
EMBED_Z = 10.0
EMBED_SNR = 3.0
CONTRAST_FLOOR = 1.0  # grey levels: the mark's own contrast, so flat areas are not amplified without bound
_KEY = 0x5EC7A1  # fixed: the layout of sync and payload chips


class WatermarkError(InputError):
    """An image that cannot carry the watermark, or one in which no watermark was found."""


@dataclass(frozen=True)
class Reading:
    """What the reader found: the payload, how sure it is (sync peak z-score) and the scale it undid."""

    payload: bytes
    z: float
    scale: float

    @property
    def hex(self) -> str:
        return self.payload.hex()


def _layout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per chip (CHIPS x CHIPS): which bit it carries (-1 = sync) and its +-1 sign."""
    rng = np.random.default_rng(_KEY)
    order = rng.permutation(CHIPS * CHIPS)
    bit = np.full(CHIPS * CHIPS, -1)
    payload_chips = order[SYNC_CHIPS:SYNC_CHIPS + PAYLOAD_BITS * CHIPS_PER_BIT]
    bit[payload_chips] = np.repeat(np.arange(PAYLOAD_BITS), CHIPS_PER_BIT)
    sign = rng.choice(np.array([-1, 1]), size=CHIPS * CHIPS)
    sync = np.where(bit == -1, sign, 0).reshape(CHIPS, CHIPS)
    return bit.reshape(CHIPS, CHIPS), sign.reshape(CHIPS, CHIPS), sync


_BIT, _SIGN, _SYNC = _layout()
_SYNC_PIXELS = np.kron(_SYNC, np.ones((CHIP, CHIP))).astype(np.float32)
_SYNC_SPECTRUM = np.conj(np.fft.rfft2(_SYNC_PIXELS))


def _bits(payload: bytes) -> np.ndarray:
    if len(payload) * 8 != PAYLOAD_BITS:
        raise InputError(f"the watermark carries {PAYLOAD_BITS // 8} bytes, got {len(payload)}")
    return np.unpackbits(np.frombuffer(payload, dtype=np.uint8))


def tile(payload: bytes) -> np.ndarray:
    """The +-1 pattern of one tile (TILE x TILE, int16) for `payload`."""
    signs = np.where(_bits(payload) == 1, 1, -1)
    chips = np.where(_BIT == -1, _SYNC, _SIGN * signs[np.maximum(_BIT, 0)])
    return np.kron(chips, np.ones((CHIP, CHIP), dtype=np.int16)).astype(np.int16)


def check_capacity(size: tuple[int, int], background: int) -> str | None:
    """Why an image of `size` (width, height) with `background` painted pixels cannot carry the mark, or None."""
    if min(size) < MIN_SIDE:
        return f"{size[0]}x{size[1]} is smaller than {MIN_SIDE} px on a side"
    if background < MIN_BACKGROUND:
        return f"only {background} background pixels (needs {MIN_BACKGROUND})"
    return None


def embed(image: Image.Image, payload: bytes, keep: np.ndarray | None = None) -> Image.Image:
    """`image` (RGB) with `payload` marked into its background; pixels where `keep` is True come out bit-exact.

    The same offset is added to R, G and B, which changes luminance only (Cb and Cr are differences that cancel it).
    Raises WatermarkError when the image cannot carry a mark that reads back: too small (see `check_capacity`), or a
    background so small or busy that the mark, read back at once, is already weak.
    """
    pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    height, width = pixels.shape[:2]
    if keep is not None:
        keep = np.ascontiguousarray(keep, dtype=bool)  # viewed as uint8 masks below
    if keep is not None and keep.shape != (height, width):
        raise InputError(f"the product mask is {keep.shape[1]}x{keep.shape[0]}, the image {width}x{height}")
    background = height * width - (0 if keep is None else int(np.count_nonzero(keep)))
    reason = check_capacity((width, height), background)
    if reason is not None:
        raise WatermarkError(f"cannot watermark: {reason}")
    # Saturating uint8 add and subtract (OpenCV) of the pattern's plus and minus parts: a few fast passes.
    reps = (-(-height // TILE), -(-width // TILE))
    pattern = tile(payload)
    plus = np.tile(((pattern > 0) * AMPLITUDE).astype(np.uint8), reps)[:height, :width]
    minus = np.tile(((pattern < 0) * AMPLITUDE).astype(np.uint8), reps)[:height, :width]
    if keep is not None:
        background = (~keep).view(np.uint8)
        plus, minus = plus * background, minus * background
    marked = cv2.subtract(cv2.add(pixels, cv2.merge([plus] * 3)), cv2.merge([minus] * 3))
    if keep is not None:  # exact by construction; stated again so no arithmetic can change the product
        cv2.copyTo(pixels, keep.view(np.uint8), marked)
    z, snr, wrong = _self_check(marked, payload)
    if not (z >= EMBED_Z and snr >= EMBED_SNR) or wrong:  # written so that a NaN fails too
        raise WatermarkError(f"cannot watermark: the background is too small or too busy for a mark that survives "
                             f"re-encoding (sync score {z:.1f}, needs {EMBED_Z:.0f}; bit SNR {snr:.1f}, needs "
                             f"{EMBED_SNR:.0f}; {wrong} bits wrong)")
    return Image.fromarray(marked, "RGB")


def _self_check(marked: np.ndarray, payload: bytes) -> tuple[float, float, int]:
    """Read a fresh mark back: its sync z-score, the bits' mean signal-to-noise ratio, how many bits read wrong."""
    z, _, chips = _read_at(_luma(marked), 1.0)
    truth = np.where(_bits(payload) == 1, 1.0, -1.0)
    carried = _BIT >= 0
    signal = chips[carried] * truth[_BIT[carried]]  # each payload chip's value, signed so the truth is positive
    sums = np.bincount(_BIT[carried], weights=signal, minlength=PAYLOAD_BITS)
    noise = float(signal.std()) * np.sqrt(CHIPS_PER_BIT) + 1e-9
    return z, float(sums.mean() / noise), int(np.count_nonzero(sums <= 0))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)


def _fold(luma: np.ndarray) -> np.ndarray:
    """High-pass `luma` (the picture is noise to the reader) and sum it onto one TILE x TILE tile."""
    residual = cv2.subtract(luma, cv2.GaussianBlur(luma, (0, 0), 2.0))
    # Weight by the inverse local contrast: textured areas (loud noise to the reader) count less, flat ones more.
    # A box filter (O(1) per pixel); its running sums can dip just below zero on flat areas: clamp before the root.
    spread = cv2.sqrt(cv2.max(cv2.blur(cv2.multiply(residual, residual), (17, 17)), 0.0))
    residual = cv2.divide(residual, cv2.add(spread, CONTRAST_FLOOR))
    height, width = residual.shape
    rows, columns = -(-height // TILE) * TILE, -(-width // TILE) * TILE
    if (rows, columns) != (height, width):
        residual = cv2.copyMakeBorder(residual, 0, rows - height, 0, columns - width, cv2.BORDER_CONSTANT, value=0)
    strips = residual.reshape(rows // TILE, TILE, columns).sum(axis=0)  # contiguous sums first: much faster
    return strips.reshape(TILE, columns // TILE, TILE).sum(axis=1)


def _read_at(luma: np.ndarray, scale: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Sync z-score, per-bit correlations and signed chip values of `luma` resized by 1 / `scale`."""
    if scale != 1.0:
        size = (round(luma.shape[1] / scale), round(luma.shape[0] / scale))
        luma = cv2.resize(luma, size, interpolation=cv2.INTER_CUBIC)
    folded = _fold(luma)
    correlation = np.fft.irfft2(np.fft.rfft2(folded) * _SYNC_SPECTRUM, s=folded.shape)
    peak = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    z = float((correlation[peak] - correlation.mean()) / (correlation.std() + 1e-9))
    aligned = np.roll(folded, (-peak[0], -peak[1]), axis=(0, 1))  # the tile's origin back at (0, 0)
    chips = aligned.reshape(CHIPS, CHIP, CHIPS, CHIP).sum(axis=(1, 3)) * _SIGN
    sums = np.bincount(_BIT[_BIT >= 0], weights=chips[_BIT >= 0], minlength=PAYLOAD_BITS)
    return z, sums, chips


def read(image: Image.Image) -> Reading:
    """The watermark in `image` (any size, after JPEG, resize or crop); WatermarkError when none is found."""
    rgb = np.asarray(image.convert("RGB"))
    if min(rgb.shape[:2]) < TILE // 2:
        raise WatermarkError(f"{rgb.shape[1]}x{rgb.shape[0]} is too small to hold a watermark")
    luma = _luma(rgb)
    best: tuple[float, float, np.ndarray] | None = None
    for scale in SCALES:
        if min(luma.shape) / scale < TILE:
            continue
        z, sums, _ = _read_at(luma, scale)
        if best is None or z > best[0]:
            best = (z, scale, sums)
        if z >= 2 * DETECTION_Z:
            break  # unmistakable: no need to try other scales
    if best is None or best[0] < DETECTION_Z:
        found = "" if best is None else f" (sync score {best[0]:.1f}, needs {DETECTION_Z:.0f})"
        raise WatermarkError(f"no Creative Studio watermark found{found}")
    z, scale, sums = best
    return Reading(np.packbits((sums > 0).astype(np.uint8)).tobytes(), z, scale)
