"""Write a small set of demo recordings in common formats."""

from __future__ import annotations

from pathlib import Path

import av
import av.logging
import numpy as np

from .synth import speech_signal, write_wav

# name, container format, codec, sample rate, channels, layout of the signal
DEMO_FILES = (
    ("interview_16k.wav", None, None, 16000, 1, [("silence", 0.8), ("speech", 2.5), ("silence", 1.0), ("speech", 3.0), ("silence", 0.6)]),
    ("field_recording_44k1_stereo.flac", "flac", "flac", 44100, 2, [("silence", 1.2), ("speech", 4.0), ("silence", 0.5)]),
    ("voice_memo_48k.m4a", "mp4", "aac", 48000, 1, [("silence", 0.5), ("speech", 2.0), ("silence", 0.7), ("speech", 1.5), ("silence", 0.5)]),
    ("podcast_22k.mp3", "mp3", "libmp3lame", 22050, 1, [("silence", 0.4), ("speech", 6.0), ("silence", 1.5), ("speech", 2.0), ("silence", 0.4)]),
    ("call_48k.opus", "ogg", "libopus", 48000, 1, [("silence", 0.6), ("speech", 2.2), ("silence", 0.6)]),
    ("room_tone_16k.wav", None, None, 16000, 1, [("silence", 2.0)]),
)


def encode(path: Path, signal: np.ndarray, sample_rate: int, channels: int, container_format: str, codec: str) -> None:
    """Encode a float mono signal with PyAV, duplicated to `channels`."""
    layout = "stereo" if channels == 2 else "mono"
    # Muxer notes about made-up timestamps are expected for a single frame.
    with av.logging.Capture(), av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=sample_rate, layout=layout)
        if codec == "vorbis":
            # FFmpeg's native Vorbis encoder is marked experimental.
            stream.codec_context.options = {"strict": "experimental"}
        planar = np.repeat(signal[None, :].astype(np.float32), channels, axis=0)
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def write_demo_files(folder: Path) -> list[Path]:
    """Write the demo recordings into `folder`; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, container_format, codec, sample_rate, channels, layout) in enumerate(DEMO_FILES):
        signal = speech_signal(layout, sample_rate=sample_rate, seed=index, noise_dbfs=-70.0)
        path = folder / name
        if container_format is None:
            write_wav(path, signal, sample_rate, channels)
        else:
            encode(path, signal, sample_rate, channels, container_format, codec)
        paths.append(path)
    return paths
