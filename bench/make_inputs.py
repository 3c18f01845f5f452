"""Build the benchmark inputs from a folder of real recordings.

Every input is cut from one "speech pool": the corpus recordings that hold
speech, converted to 16 kHz mono and joined in MANIFEST.tsv order. Cuts use
fixed offsets and the encoders run with fixed settings, so the same corpus
and the same ffmpeg build give the same inputs. Existing inputs are kept;
pass --force to rebuild them.

    python bench/make_inputs.py [--corpus DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import imageio_ffmpeg
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus"
DEFAULT_WORK = REPO / "bench" / "work"
POOL_RATE = 16000

# Format of the hour's files, used in turn: (extension, ffmpeg output options).
# Sample rates and channel counts vary so the decoder also resamples and downmixes.
HOUR_FORMATS = [
    ("wav", ["-ar", "44100", "-ac", "2", "-c:a", "pcm_s16le"]),
    ("flac", ["-ar", "48000", "-ac", "1", "-c:a", "flac"]),
    ("mp3", ["-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k"]),
    ("ogg", ["-ar", "22050", "-ac", "1", "-c:a", "libvorbis", "-q:a", "4"]),
    ("opus", ["-ar", "48000", "-ac", "1", "-c:a", "libopus", "-b:a", "32k"]),
    ("m4a", ["-ar", "48000", "-ac", "1", "-c:a", "aac", "-b:a", "96k"]),
]
HOUR_FILES = 60
HOUR_FILE_SECONDS = 60.0
# Long files: MP3 at 44.1 kHz stereo, a common form of long recordings.
LONG_OPTIONS = ["-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "64k"]
LONG_SECONDS = 2 * 3600.0
SHORT_SECONDS = 120.0
TINY_FILES = 10_000
TINY_PER_FOLDER = 1000


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def speech_recordings(corpus: Path) -> list[Path]:
    """Return the corpus files that contain speech, in MANIFEST.tsv order."""
    manifest = corpus / "MANIFEST.tsv"
    if not manifest.is_file():
        raise SystemExit(f"corpus manifest not found: {manifest}; pass the corpus folder with --corpus")
    with open(manifest, encoding="utf-8", newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    paths = [corpus / row["file"] for row in rows if "NO SPEECH" not in row.get("notes", "")]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SystemExit(f"corpus files listed in MANIFEST.tsv are missing: {', '.join(missing)}")
    return paths


def decode_with_ffmpeg(path: Path) -> np.ndarray:
    """Return a recording as 16 kHz mono int16 samples, converted by the ffmpeg CLI."""
    command = [ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-ac", "1", "-ar", str(POOL_RATE), "-f", "s16le", "-"]
    output = subprocess.run(command, check=True, capture_output=True).stdout
    return np.frombuffer(output, dtype="<i2")


def build_pool(corpus: Path) -> np.ndarray:
    return np.concatenate([decode_with_ffmpeg(path) for path in speech_recordings(corpus)])


def cut(pool: np.ndarray, offset_seconds: float, seconds: float) -> np.ndarray:
    """Return `seconds` of the pool from `offset_seconds`, wrapping around its end."""
    start = int(offset_seconds * POOL_RATE) % pool.size
    count = int(seconds * POOL_RATE)
    indices = (start + np.arange(count)) % pool.size
    return pool[indices]


def encode(samples: np.ndarray, options: list[str], path: Path) -> None:
    """Encode 16 kHz mono int16 samples into `path` through a temporary file."""
    temporary = path.with_name(f".{path.name}.tmp{path.suffix}")
    command = [
        ffmpeg_exe(), "-nostdin", "-v", "error", "-y",
        "-f", "s16le", "-ar", str(POOL_RATE), "-ac", "1", "-i", "-",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
        *options, str(temporary),
    ]
    subprocess.run(command, input=samples.astype("<i2").tobytes(), check=True)
    temporary.replace(path)


def write_wav(samples: np.ndarray, path: Path) -> None:
    with wave.open(str(path), "wb") as stream:
        stream.setnchannels(1)
        stream.setsampwidth(2)
        stream.setframerate(POOL_RATE)
        stream.writeframes(samples.astype("<i2").tobytes())


def build(corpus: Path, work: Path, force: bool) -> None:
    inputs = work / "inputs"
    marker = inputs / ".complete"
    if marker.exists() and not force:
        print(f"inputs already built in {inputs}; pass --force to rebuild")
        return
    if inputs.exists():
        shutil.rmtree(inputs)
    print(f"building the speech pool from {corpus}", flush=True)
    pool = build_pool(corpus)
    print(f"speech pool: {pool.size / POOL_RATE:.1f} s", flush=True)

    hour = inputs / "hour"
    hour.mkdir(parents=True)
    for index in range(HOUR_FILES):
        extension, options = HOUR_FORMATS[index % len(HOUR_FORMATS)]
        # 61 s apart, so neighbouring files start at different places in the pool.
        samples = cut(pool, index * 61.0, HOUR_FILE_SECONDS)
        encode(samples, options, hour / f"hour-{index:02d}.{extension}")
    print(f"hour: {HOUR_FILES} files in {hour}", flush=True)

    for name, seconds in (("long", LONG_SECONDS), ("short", SHORT_SECONDS)):
        folder = inputs / name
        folder.mkdir(parents=True)
        encode(cut(pool, 0.0, seconds), LONG_OPTIONS, folder / f"{name}.mp3")
        print(f"{name}: {seconds / 60:.0f} min MP3 in {folder}", flush=True)

    tiny = inputs / "tiny"
    for index in range(TINY_FILES):
        folder = tiny / f"{index // TINY_PER_FOLDER:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Offsets 1.7 s apart give each file a different second of speech.
        write_wav(cut(pool, index * 1.7, 1.0), folder / f"tiny-{index:05d}.wav")
    print(f"tiny: {TINY_FILES} one-second WAV files in {tiny}", flush=True)
    marker.write_text("complete\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="Folder of real recordings with a MANIFEST.tsv (default: %(default)s).")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="Folder for the built inputs (default: %(default)s).")
    parser.add_argument("--force", action="store_true", help="Rebuild inputs that already exist.")
    args = parser.parse_args(argv)
    build(args.corpus.resolve(), args.work.resolve(), args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
