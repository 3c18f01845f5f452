"""Measure audioprep's speed and memory against the ffmpeg CLI, in one run.

For each input set it times three things with the same parallelism:

* floor: the ffmpeg CLI converting each file to 16 kHz mono s16 into
  /dev/null, one process per file;
* decoder: `PcmStream` alone over the same files in a process pool;
* product: `manage.py prepare_audio` in a subprocess with a fresh SQLite
  database (migrate and import_audio run first and are not timed).

It also samples the memory of every process of the product run, measures
the start-up with many pending rows, prints which targets pass and writes
bench/RESULTS.md. Build the inputs first with bench/make_inputs.py.

    python bench/run.py [--workers 2] [--repeat 3] [--cases hour,long,short,tiny,pending]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import imageio_ffmpeg
import psutil

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / "bench" / "work"
DEFAULT_RESULTS = REPO / "bench" / "RESULTS.md"
MIB = 1024 * 1024
ALL_CASES = ("hour", "silero", "long", "short", "tiny", "pending")
# Seconds a product run may take before the benchmark gives up on it.
PRODUCT_TIMEOUT_S = 3600.0


# -- the floor and the decoder ----------------------------------------------


def list_inputs(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file() and not path.name.startswith("."))


def ffmpeg_to_null(path: Path) -> None:
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path),
        "-ac", "1", "-ar", "16000", "-f", "s16le", "-y", "/dev/null",
    ]
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)


def time_floor(files: list[Path], workers: int) -> float:
    """Return the wall seconds of one ffmpeg process per file, `workers` at a time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(ffmpeg_to_null, files))
    return time.perf_counter() - started


def decode_file(path: str) -> int:
    """Decode one file with the product's decoder; return the number of output samples."""
    from audioprep.pipeline.audio_io import PcmStream

    total = 0
    with PcmStream(path) as stream:
        for chunk in stream:
            total += chunk.size
    return total


def _warm_up(_index: int) -> int:
    import audioprep.pipeline.audio_io  # noqa: F401

    return os.getpid()


def time_decoder(files: list[Path], workers: int) -> float:
    """Return the wall seconds of `PcmStream` over every file in a warm process pool."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        # Start every worker and import the decoder before the clock starts.
        list(pool.map(_warm_up, range(workers)))
        chunksize = max(1, len(files) // (workers * 50))
        started = time.perf_counter()
        list(pool.map(decode_file, [str(path) for path in files], chunksize=chunksize))
        return time.perf_counter() - started


# -- product runs ------------------------------------------------------------


@dataclass
class ProductRun:
    """One timed prepare_audio run and what the memory sampler saw."""

    seconds: float
    exit_code: int
    statuses: dict[str, int]
    # Peak RSS in bytes per process: {pid: (role, peak)}.
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)
    first_claim_s: float | None = None
    first_result_s: float | None = None
    parent_rss_at_first_claim: int | None = None

    def peak_of(self, role: str) -> int:
        return max((peak for kind, peak in self.peaks.values() if kind == role), default=0)


def product_env(run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DATABASE_URL"] = f"sqlite:///{run_dir / 'bench.sqlite3'}"
    env["AUDIOPREP_OUTPUT_DIR"] = str(run_dir / "output")
    env["AUDIOPREP_VAR_DIR"] = str(run_dir / "var")
    env.pop("AUDIOPREP_TEST_HOOK", None)
    return env


def manage(run_dir: Path, *arguments: str) -> None:
    command = [sys.executable, str(REPO / "manage.py"), *arguments]
    with open(run_dir / "setup.log", "a", encoding="utf-8") as log:
        subprocess.run(command, check=True, cwd=REPO, env=product_env(run_dir), stdout=log, stderr=subprocess.STDOUT)


def fresh_run_dir(work: Path, name: str) -> Path:
    run_dir = work / "runs" / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    manage(run_dir, "migrate", "--no-input", "--verbosity", "0")
    return run_dir


def role_of(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "resource_tracker" in command:
        return "resource_tracker"
    if "audioprep.pipeline.decode_helper" in command:
        return "decode_helper"
    if "multiprocessing" in command or "--multiprocessing-fork" in command:
        return "worker"
    return "other"


class TreeSampler:
    """Sample the RSS of a process and all its descendants every `interval` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.last_root_rss = 0
        self._roles: dict[int, str] = {pid: "parent"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            role = self._roles.get(process.pid)
            if role is None:
                role = self._roles[process.pid] = role_of(process)
            if process.pid == self.root.pid:
                self.last_root_rss = rss
            previous = self.peaks.get(process.pid, (role, 0))[1]
            self.peaks[process.pid] = (role, max(previous, rss))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def read_statuses(run_dir: Path) -> dict[str, int]:
    with sqlite3.connect(run_dir / "bench.sqlite3") as db:
        return dict(db.execute("SELECT status, COUNT(*) FROM audioprep_audiofile GROUP BY status").fetchall())


def run_prepare(run_dir: Path, workers: int, interval: float, extra: tuple[str, ...] = (), watch_claims: bool = False) -> ProductRun:
    """Time `manage.py prepare_audio` alone; optionally watch for the first claim."""
    command = [sys.executable, str(REPO / "manage.py"), "prepare_audio", "--num_workers", str(workers), *extra]
    log_path = run_dir / "prepare.log"
    with open(log_path, "w", encoding="utf-8") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, env=product_env(run_dir), stdout=log, stderr=subprocess.STDOUT)
        sampler = TreeSampler(child.pid, interval)
        sampler.start()
        first_claim = first_result = rss_at_claim = None
        if watch_claims:
            first_claim, first_result, rss_at_claim = watch_first_file(run_dir, child, sampler, started)
        try:
            exit_code = child.wait(timeout=PRODUCT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            exit_code = child.wait()
        seconds = time.perf_counter() - started
        sampler.stop()
    return ProductRun(
        seconds=seconds,
        exit_code=exit_code,
        statuses=read_statuses(run_dir),
        peaks=sampler.peaks,
        first_claim_s=first_claim,
        first_result_s=first_result,
        parent_rss_at_first_claim=rss_at_claim,
    )


def watch_first_file(run_dir: Path, child: subprocess.Popen, sampler: TreeSampler, started: float):
    """Poll the database until a row leaves 'pending' and the run log until a file finishes.

    The first claim is the moment the first task goes to the queue that
    feeds the workers. The first result is the run log's first per-file line.
    """
    first_claim = first_result = rss_at_claim = None
    logs = run_dir / "output" / "logs"
    db = sqlite3.connect(f"file:{run_dir / 'bench.sqlite3'}?mode=ro", uri=True, timeout=5)
    query = "SELECT 1 FROM audioprep_audiofile WHERE status != 'pending' LIMIT 1"
    try:
        while child.poll() is None and (first_claim is None or first_result is None):
            now = time.perf_counter() - started
            if first_claim is None:
                try:
                    claimed = db.execute(query).fetchone()
                except sqlite3.OperationalError:
                    claimed = None
                if claimed:
                    first_claim = now
                    sampler.sample()
                    rss_at_claim = sampler.last_root_rss
            if first_result is None:
                for log_file in logs.glob("run-*.log") if logs.is_dir() else ():
                    text = log_file.read_text(encoding="utf-8", errors="replace")
                    if any(" file=" in line and (" done:" in line or " no_speech:" in line or " failed:" in line) for line in text.splitlines()):
                        first_result = time.perf_counter() - started
            time.sleep(0.01)
    finally:
        db.close()
    return first_claim, first_result, rss_at_claim


def product_case(work: Path, name: str, inputs: Path, workers: int, interval: float, rep: int, extra: tuple[str, ...] = ()) -> ProductRun:
    run_dir = fresh_run_dir(work, f"{name}-{rep}")
    manage(run_dir, "import_audio", str(inputs))
    return run_prepare(run_dir, workers, interval, extra)


SILERO_MODEL_NAMES = ("silero_vad.onnx", "silero_vad_16k_sequence.onnx")


def find_silero_models() -> list[Path]:
    """Return the Silero model files of the silero-vad package in both forms, without importing it (that needs torch)."""
    import importlib.util

    spec = importlib.util.find_spec("silero_vad")
    models = []
    for folder in (spec.submodule_search_locations or []) if spec else []:
        models += [Path(folder) / "data" / name for name in SILERO_MODEL_NAMES if (Path(folder) / "data" / name).is_file()]
    return models


# -- pending rows --------------------------------------------------------------


def insert_pending_rows(run_dir: Path, files: list[Path], count: int) -> None:
    """Insert `count` pending rows over a few real files, with bulk SQL.

    Paths must be unique, so row i names file i % len(files) through one of
    many symbolic links to the folder that contains the files.
    """
    folder = files[0].parent
    if any(path.parent != folder for path in files):
        raise ValueError("the files for pending rows must share one folder")
    links = run_dir / "links"
    links.mkdir()
    num_links = -(-count // len(files))
    for index in range(num_links):
        (links / f"{index:06d}").symlink_to(folder, target_is_directory=True)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    values = {
        "status": "pending", "reason": "", "checksum": "", "container": "", "codec": "", "num_segments": 0,
        "flags": "[]", "config_hash": "", "attempts": 0, "claimed_by": "", "created_at": now, "updated_at": now,
    }
    with sqlite3.connect(run_dir / "bench.sqlite3") as db:
        columns = db.execute("PRAGMA table_info(audioprep_audiofile)").fetchall()
        required = [name for _cid, name, _type, notnull, default, pk in columns if notnull and default is None and not pk and name != "path"]
        unknown = [name for name in required if name not in values]
        if unknown:
            raise SystemExit(f"cannot insert pending rows: no bench value for required columns {unknown}")
        names = ["path", *required]
        sql = f"INSERT INTO audioprep_audiofile ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        fixed = tuple(values[name] for name in required)
        rows = (
            (str(links / f"{index // len(files):06d}" / files[index % len(files)].name), *fixed)
            for index in range(count)
        )
        db.executemany(sql, rows)


def pending_case(work: Path, tiny_files: list[Path], rows: int, workers: int, interval: float, limit: int) -> ProductRun:
    run_dir = fresh_run_dir(work, "pending")
    insert_pending_rows(run_dir, tiny_files[:20], rows)
    return run_prepare(run_dir, workers, interval, extra=("--limit", str(limit)), watch_claims=True)


# -- summary -------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mib(value: float) -> float:
    return value / MIB


def machine_lines() -> list[str]:
    import av
    import django
    import numpy

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ffmpeg_version = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    libraries = ", ".join(f"{name} {'.'.join(map(str, version))}" for name, version in sorted(av.library_versions.items()))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
    return [
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Load average (1, 5, 15 min) when the run ended: {', '.join(f'{value:.1f}' for value in os.getloadavg())}; "
        "other processes on the machine slow every measurement when it is above the core count",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; RAM: {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()}, PyAV {av.__version__} ({libraries}), NumPy {numpy.__version__}, Django {django.get_version()}",
        f"- Floor: {ffmpeg_version} (imageio-ffmpeg {imageio_ffmpeg.__version__})",
        f"- Commit: {commit or 'unknown'}{' with uncommitted changes' if dirty else ''}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="Folder with inputs/ from make_inputs.py; runs go to runs/ (default: %(default)s).")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="Markdown file to write (default: %(default)s).")
    parser.add_argument("--workers", type=int, default=2, help="Worker processes of the product, and parallel ffmpeg processes of the floor (default: %(default)s).")
    parser.add_argument("--repeat", type=int, default=3, help="Repetitions of the fast measurements; the table shows medians (default: %(default)s).")
    parser.add_argument("--repeat-slow", type=int, default=3, help="Repetitions of the 2-hour file, the 10,000 files and the pending rows (default: %(default)s).")
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="Comma-separated subset of %(default)s.")
    parser.add_argument("--tiny-floor-files", type=int, default=1000, help="One-second files the floor converts; its files/s is measured on these (0: all).")
    parser.add_argument("--pending-rows", type=int, default=100_000, help="Pending rows for the start-up measurement (default: %(default)s).")
    parser.add_argument("--pending-limit", type=int, default=200, help="Files the pending-rows run prepares before it ends (default: %(default)s).")
    parser.add_argument("--interval", type=float, default=0.05, help="Seconds between memory samples (default: %(default)s).")
    parser.add_argument("--silero-model", type=Path, action="append", default=None,
                        help="Silero VAD model (ONNX) for the 'silero' case; repeat for several (default: silero_vad.onnx "
                             "and silero_vad_16k_sequence.onnx of the silero-vad package).")
    args = parser.parse_args(argv)

    work = args.work.resolve()
    inputs = work / "inputs"
    if not (inputs / ".complete").exists():
        raise SystemExit(f"inputs not found in {inputs}; build them with 'python bench/make_inputs.py'")
    cases = [case.strip() for case in args.cases.split(",") if case.strip()]
    unknown = sorted(set(cases) - set(ALL_CASES))
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {', '.join(ALL_CASES)}")
    workers = args.workers
    rows: list[str] = []
    memory_rows: list[str] = []
    targets: list[tuple[str, str, bool]] = []
    long_peaks: dict[str, float] = {}
    short_peaks: dict[str, float] = {}
    floors: dict[str, float] = {}

    def say(text: str) -> None:
        print(text, flush=True)

    def measure(label: str, function, repetitions: int) -> list[float]:
        values = []
        for rep in range(repetitions):
            values.append(function(rep))
            say(f"  {label} #{rep + 1}: {values[-1]:.2f} s")
        return values

    def product_runs(name: str, folder: Path, repetitions: int, extra: tuple[str, ...] = ()) -> list[ProductRun]:
        runs = []
        for rep in range(repetitions):
            run = product_case(work, name, folder, workers, args.interval, rep, extra)
            say(f"  prepare_audio #{rep + 1}: {run.seconds:.2f} s, exit {run.exit_code}, {run.statuses}, "
                f"parent {mib(run.peak_of('parent')):.0f} MiB, worker {mib(run.peak_of('worker')):.0f} MiB")
            runs.append(run)
        return runs

    for case in cases:
        if case in ("hour", "long", "short"):
            folder = inputs / case
            files = list_inputs(folder)
            reps = args.repeat_slow if case == "long" else args.repeat
            seconds_of_audio = {"hour": 3600.0, "long": 7200.0, "short": 120.0}[case]
            say(f"{case}: {len(files)} files, {seconds_of_audio / 60:.0f} min of audio, {reps} repetitions")
            floor = floors[case] = median(measure("floor", lambda rep: time_floor(files, workers), reps))
            decoder = median(measure("decoder", lambda rep: time_decoder(files, workers), reps))
            runs = product_runs(case, folder, reps)
            product = median([run.seconds for run in runs])
            ratio = product / floor
            rows.append(
                f"| {case} ({len(files)} {'file' if len(files) == 1 else 'files'}, {seconds_of_audio / 60:.0f} min) | {floor:.2f} s | {decoder:.2f} s ({decoder / floor:.2f}x) "
                f"| {product:.2f} s | **{ratio:.2f}x** | {seconds_of_audio / product:.0f}x | {reps} |"
            )
            peaks = {role: median([run.peak_of(role) for run in runs]) for role in ("parent", "worker", "decode_helper", "resource_tracker")}
            for role, value in peaks.items():
                if value:
                    memory_rows.append(f"| {case} | {role} | {mib(value):.1f} MiB |")
            if case == "hour":
                targets.append(("hour of 60 files: prepare_audio <= 1.0x floor", f"{ratio:.2f}x", ratio <= 1.0))
            if case == "long":
                long_peaks = peaks
                targets.append(("2-hour file: prepare_audio <= 1.25x floor", f"{ratio:.2f}x", ratio <= 1.25))
                worst = max(peaks.values())
                targets.append(("2-hour file: peak RSS of every process <= 150 MB", f"{worst / 1e6:.0f} MB", worst <= 150e6))
            if case == "short":
                short_peaks = peaks
        elif case == "silero":
            models = args.silero_model or find_silero_models()
            if not models or not all(model.is_file() for model in models):
                say("silero: skipped, no model file; pass --silero-model or 'pip install --no-deps silero-vad'")
                continue
            files = list_inputs(inputs / "hour")
            floor = floors.get("hour") or median(measure("floor", lambda rep: time_floor(files, workers), args.repeat))
            for model in models:
                say(f"silero: the hour of {len(files)} files with --model_for_vad {model}, {args.repeat} repetitions")
                runs = product_runs("silero", inputs / "hour", args.repeat, ("--model_for_vad", str(model)))
                product = median([run.seconds for run in runs])
                ratio = product / floor
                rows.append(
                    f"| hour with Silero VAD, {model.name} ({len(files)} files, 60 min) | {floor:.2f} s | | {product:.2f} s "
                    f"| **{ratio:.2f}x** | {3600.0 / product:.0f}x | {args.repeat} |"
                )
                memory_rows.append(f"| silero, {model.name} | worker | {mib(median([run.peak_of('worker') for run in runs])):.1f} MiB |")
                targets.append((f"hour of 60 files with Silero VAD ({model.name}): prepare_audio <= 3.0x floor", f"{ratio:.2f}x", ratio <= 3.0))
        elif case == "tiny":
            files = list_inputs(inputs / "tiny")
            floor_files = files[: args.tiny_floor_files] if args.tiny_floor_files > 0 else files
            say(f"tiny: {len(files)} one-second files; floor on {len(floor_files)}")
            floor = median(measure("floor", lambda rep: time_floor(floor_files, workers), args.repeat))
            decoder = median(measure("decoder", lambda rep: time_decoder(files, workers), args.repeat))
            runs = []
            for rep in range(args.repeat_slow):
                run = product_case(work, "tiny", inputs / "tiny", workers, args.interval, rep)
                say(f"  prepare_audio #{rep + 1}: {run.seconds:.2f} s, exit {run.exit_code}, {run.statuses}, "
                    f"parent {mib(run.peak_of('parent')):.0f} MiB")
                runs.append(run)
            product = median([run.seconds for run in runs])
            floor_rate = len(floor_files) / floor
            decoder_rate = len(files) / decoder
            product_rate = len(files) / product
            overhead_ms = 1000 * (product / len(files) - floor / len(floor_files))
            rows.append(
                f"| tiny ({len(files)} x 1 s) | {floor_rate:.0f} files/s | {decoder_rate:.0f} files/s | {product_rate:.0f} files/s "
                f"| **{product_rate / floor_rate:.2f}x files/s** | {1000 * product / len(files):.2f} ms/file wall, "
                f"{overhead_ms:+.2f} ms vs floor | {args.repeat_slow} |"
            )
            memory_rows.append(f"| tiny | parent | {mib(median([run.peak_of('parent') for run in runs])):.1f} MiB |")
            targets.append(("10,000 one-second files: >= 5x floor files/s", f"{product_rate / floor_rate:.2f}x", product_rate >= 5 * floor_rate))
        elif case == "pending":
            tiny_files = list_inputs(inputs / "tiny" / "00")
            say(f"pending: {args.pending_rows} pending rows over {min(20, len(tiny_files))} real files, --limit {args.pending_limit}")
            runs = []
            for rep in range(args.repeat_slow):
                run = pending_case(work, tiny_files, args.pending_rows, workers, args.interval, args.pending_limit)
                say(f"  first claim {run.first_claim_s}, first result {run.first_result_s}, "
                    f"parent RSS there {mib(run.parent_rss_at_first_claim or 0):.0f} MiB, exit {run.exit_code}")
                runs.append(run)
            first_claim = median([run.first_claim_s if run.first_claim_s is not None else float("inf") for run in runs])
            first_result = median([run.first_result_s if run.first_result_s is not None else float("inf") for run in runs])
            rss = median([run.parent_rss_at_first_claim or 0 for run in runs])
            parent_peak = median([run.peak_of("parent") for run in runs])
            rows.append(
                f"| pending ({args.pending_rows} rows) | | | first claim {first_claim:.2f} s, first result {first_result:.2f} s "
                f"| | parent RSS {mib(rss):.0f} MiB at first claim, {mib(parent_peak):.0f} MiB peak | {args.repeat_slow} |"
            )
            memory_rows.append(f"| pending | parent | {mib(parent_peak):.1f} MiB |")
            targets.append((f"{args.pending_rows} pending rows: first file in flight within 3 s", f"{first_claim:.2f} s", first_claim <= 3.0))
            targets.append((f"{args.pending_rows} pending rows: parent RSS < 300 MB", f"{rss / 1e6:.0f} MB", rss < 300e6))

    if long_peaks and short_peaks:
        spread = max(abs(long_peaks[role] - short_peaks[role]) / short_peaks[role] for role in ("parent", "worker"))
        targets.append(("2-hour file: peak RSS within 10 % of the 2-minute file's", f"{100 * spread:.1f} %", spread <= 0.10))

    lines = [
        "# Benchmark results",
        "",
        "Written by `python bench/run.py`; see bench/README.md for what each column measures.",
        "",
        *machine_lines(),
        f"- Workers: {workers}; repetitions: {args.repeat} (slow cases {args.repeat_slow}); medians shown",
        "",
        "| input | floor: ffmpeg CLI | decoder alone (PcmStream) | prepare_audio | product/floor | speed | reps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Peak RSS per process (median over repetitions; `worker` is the largest worker):",
        "",
        "| input | process | peak RSS |",
        "| --- | --- | --- |",
        *memory_rows,
        "",
        "| target | measured | result |",
        "| --- | --- | --- |",
        *(f"| {name} | {value} | {'pass' if ok else 'FAIL'} |" for name, value, ok in targets),
        "",
    ]
    args.results.write_text("\n".join(lines), encoding="utf-8")
    say("")
    for name, value, ok in targets:
        say(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
    say(f"results written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
