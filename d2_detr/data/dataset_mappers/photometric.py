"""Photometric augmentation (image only, targets unchanged) for the DETR mapper.

Detectron2's brightness / contrast / saturation augmentations plus white balance, Gaussian blur
and sensor noise, in a random order per image. Every random draw uses numpy's global RNG, as
Detectron2's augmentations do (the training loader seeds it per sample).
"""

import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = [
    "RandomGaussianBlur",
    "RandomGaussianNoise",
    "RandomPhotometricOrder",
    "RandomWhiteBalance",
    "build_photometric_augmentations",
]


def _as_uint8(img):
    return np.clip(img, 0, 255).round().astype(np.uint8)


class RandomWhiteBalance(T.Augmentation):
    """Multiply each colour channel by its own factor from [1 - gain, 1 + gain]."""

    def __init__(self, gain):
        super().__init__()
        self.gain = float(gain)

    def get_transform(self, image):
        factors = np.random.uniform(1 - self.gain, 1 + self.gain, image.shape[-1])
        return T.ColorTransform(lambda img: _as_uint8(img.astype(np.float32) * factors))


class RandomGaussianBlur(T.Augmentation):
    """With probability ``prob``, a Gaussian blur with sigma from ``sigma`` (lo, hi) pixels."""

    def __init__(self, prob, sigma):
        super().__init__()
        self.prob = float(prob)
        self.sigma = tuple(float(s) for s in sigma)

    def get_transform(self, image):
        if np.random.rand() >= self.prob:
            return T.NoOpTransform()
        sigma = np.random.uniform(*self.sigma)
        return T.ColorTransform(lambda img: cv2.GaussianBlur(img, (0, 0), sigma))


class RandomGaussianNoise(T.Augmentation):
    """Add Gaussian noise of a std drawn from [0, ``max_std``] grey levels."""

    def __init__(self, max_std):
        super().__init__()
        self.max_std = float(max_std)

    def get_transform(self, image):
        std = np.random.uniform(0, self.max_std)
        noise = np.random.normal(0, std, image.shape).astype(np.float32)
        return T.ColorTransform(lambda img: _as_uint8(img.astype(np.float32) + noise))


class RandomPhotometricOrder(T.Augmentation):
    """Apply ``augs`` in a random order (colour changes and blur / noise do not commute)."""

    def __init__(self, augs):
        super().__init__()
        self.augs = list(augs)

    def get_transform(self, image):
        order = np.random.permutation(len(self.augs))
        transforms = []
        for i in order:
            t = self.augs[int(i)].get_transform(image)
            image = t.apply_image(image)
            transforms.append(t)
        return T.TransformList(transforms)

    def __repr__(self):
        return f"RandomPhotometricOrder({self.augs})"


def build_photometric_augmentations(cfg):
    """``INPUT.PHOTOMETRIC`` -> a list of augmentations (empty when disabled)."""
    p = cfg.INPUT.PHOTOMETRIC
    if not p.ENABLED:
        return []
    for key in ("BRIGHTNESS", "CONTRAST", "SATURATION", "WHITE_BALANCE"):
        if not 0 <= p[key] < 1:
            raise ValueError(f"INPUT.PHOTOMETRIC.{key} must be in [0, 1), got {p[key]}")
    if not 0 <= p.BLUR_PROB <= 1 or p.NOISE < 0:
        raise ValueError(
            f"INPUT.PHOTOMETRIC: BLUR_PROB must be in [0, 1] and NOISE >= 0, got "
            f"{p.BLUR_PROB} and {p.NOISE}"
        )
    if len(p.BLUR_SIGMA) != 2 or not 0 < p.BLUR_SIGMA[0] <= p.BLUR_SIGMA[1]:
        raise ValueError(
            f"INPUT.PHOTOMETRIC.BLUR_SIGMA must be (lo, hi), 0 < lo <= hi: {p.BLUR_SIGMA}"
        )
    augs = []
    if p.BRIGHTNESS:
        augs.append(T.RandomBrightness(1 - p.BRIGHTNESS, 1 + p.BRIGHTNESS))
    if p.CONTRAST:
        augs.append(T.RandomContrast(1 - p.CONTRAST, 1 + p.CONTRAST))
    if p.SATURATION:
        augs.append(T.RandomSaturation(1 - p.SATURATION, 1 + p.SATURATION))
    if p.WHITE_BALANCE:
        augs.append(RandomWhiteBalance(p.WHITE_BALANCE))
    if p.BLUR_PROB:
        augs.append(RandomGaussianBlur(p.BLUR_PROB, p.BLUR_SIGMA))
    if p.NOISE:
        augs.append(RandomGaussianNoise(p.NOISE))
    return [RandomPhotometricOrder(augs)] if augs else []
