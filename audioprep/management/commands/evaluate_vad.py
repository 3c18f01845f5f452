"""`manage.py evaluate_vad FOLDER`: score the segmentation against reference speech intervals."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from ... import service
from ...evaluation import DEFAULT_COLLAR_S, REFERENCE_KEY, SWEEP_GRID, evaluate_folder, sweep_configs
from ...pipeline.config import PrepConfig, WEBRTC_MODEL
from ...pipeline.errors import PrepError


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table(report: dict) -> str:
    """Return the per-file and mean scores as a fixed-width text table (rates in %)."""
    header = (
        f"{'file':<40} {'segs':>5} {'P':>6} {'R':>6} {'F1':>6} {'F1 col':>6} {'FA %':>6} {'miss %':>6} "
        f"{'DetER':>6} {'DetER col':>9} {'bound %':>7}"
    )
    lines = [header, "-" * len(header)]
    for item in report["files"]:
        if item["error"]:
            lines.append(f"{item['name'][:40]:<40} failed: {item['error']}")
            continue
        strict, collared = item["strict"], item["collared"]
        lines.append(
            f"{item['name'][:40]:<40} {item['num_segments']:>5} {_number(strict['precision']):>6} {_number(strict['recall']):>6} "
            f"{_number(strict['f1']):>6} {_number(collared['f1']):>6} {_percent(strict['false_alarm_rate']):>6} "
            f"{_percent(strict['miss_rate']):>6} {_number(strict['detection_error_rate']):>6} "
            f"{_number(collared['detection_error_rate']):>9} {_percent(item['boundary_hit_rate']):>7}"
        )
    summary = report["summary"]
    strict, collared = summary["strict"], summary["collared"]
    lines.append("-" * len(header))
    lines.append(
        f"{'mean of ' + str(summary['num_files']) + ' files':<40} {summary['num_segments']:>5} {_number(strict['precision']):>6} "
        f"{_number(strict['recall']):>6} {_number(strict['f1']):>6} {_number(collared['f1']):>6} "
        f"{_percent(strict['false_alarm_rate']):>6} {_percent(strict['miss_rate']):>6} "
        f"{_number(strict['detection_error_rate']):>6} {_number(collared['detection_error_rate']):>9} "
        f"{_percent(summary['boundary_hit_rate']):>7}"
    )
    return "\n".join(lines)


class Command(BaseCommand):
    help = (
        "Run the configured VAD and segmentation policy on every audio file of FOLDER that has a JSON "
        "reference of the same name beside it, and report frame-level precision, recall, F1, false alarm, "
        "miss and detection error rates on a 10 ms grid (strict and with a collar). Needs no database."
    )
    requires_system_checks: list = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("folder", help="Folder of audio files with same-named JSON files that contain the reference intervals.")
        service.add_prepare_arguments(parser)
        parser.add_argument("--json", dest="json_path", default=None, help="Also write the full report as JSON to this path.")
        parser.add_argument("--collar", type=float, default=DEFAULT_COLLAR_S, help="Collar in seconds around reference boundaries for the collared scores and boundary hits.")
        parser.add_argument("--reference_key", "--reference-key", dest="reference_key", default=REFERENCE_KEY, help="JSON key of the reference interval list.")
        parser.add_argument("--sweep", action="store_true", help="Also try a grid of " + ", ".join(SWEEP_GRID) + " and report the best by detection error rate.")

    def handle(self, *args, **options) -> None:
        service.configure_stderr_log(options["verbosity"])
        folder = Path(options["folder"])
        if not folder.is_dir():
            raise CommandError(f"folder not found: {folder}")
        if options["collar"] < 0:
            raise CommandError(f"--collar must be 0 or more, got {options['collar']}")
        config = self._config(options)
        try:
            self._check_model(config)
            report = evaluate_folder(folder, config, collar_s=options["collar"], reference_key=options["reference_key"])
        except (ValueError, PrepError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(format_table(report))
        if options["sweep"]:
            report["sweep"] = self._sweep(folder, config, options)
        if options["json_path"]:
            Path(options["json_path"]).write_text(json.dumps(report, indent=2))
            self.stdout.write(f"report written to {options['json_path']}")

    def _config(self, options: dict) -> PrepConfig:
        model = options.get("model_for_vad")
        if model and model != WEBRTC_MODEL:
            options = options | {"model_for_vad": str(Path(model).expanduser().resolve())}
        try:
            # The model is set before the config is built, so the policy
            # defaults of its backend apply.
            config = service.build_config(options)
        except (service.PrepareUsageError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        return config

    @staticmethod
    def _check_model(config: PrepConfig) -> None:
        if config.vad_model == WEBRTC_MODEL:
            from ...pipeline.vad.webrtc import check_webrtcvad

            check_webrtcvad()
        else:
            from ...pipeline.vad.silero import check_model

            check_model(config.vad_model)

    def _sweep(self, folder: Path, base: PrepConfig, options: dict) -> list[dict]:
        results = []
        for config in sweep_configs(base):
            summary = evaluate_folder(folder, config, collar_s=options["collar"], reference_key=options["reference_key"])["summary"]
            values = {name: getattr(config, name) for name in SWEEP_GRID}
            results.append({"parameters": values, "summary": summary})
        scored = [item for item in results if item["summary"]["strict"]["detection_error_rate"] is not None]
        scored.sort(key=lambda item: item["summary"]["strict"]["detection_error_rate"])
        self.stdout.write(f"\nsweep over {len(results)} settings, best first by strict DetER:")
        self.stdout.write(f"{'parameters':<60} {'DetER':>6} {'F1 col':>6} {'FA %':>6} {'miss %':>6}")
        for item in scored[:10]:
            strict, collared = item["summary"]["strict"], item["summary"]["collared"]
            label = " ".join(f"--{name} {value}" for name, value in item["parameters"].items())
            self.stdout.write(
                f"{label:<80} {_number(strict['detection_error_rate']):>6} {_number(collared['f1']):>6} "
                f"{_percent(strict['false_alarm_rate']):>6} {_percent(strict['miss_rate']):>6}"
            )
        return scored
