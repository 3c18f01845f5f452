"""Voice activity detectors: 16 kHz int16 frames in, per-frame speech scores out."""

from .base import FrameDetector, create_detector

__all__ = ["FrameDetector", "create_detector"]
