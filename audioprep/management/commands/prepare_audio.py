"""`manage.py prepare_audio`: prepare every pending AudioFile."""

from __future__ import annotations

import signal
import sys

from django.core.management.base import BaseCommand, CommandError, SystemCheckError

from ... import service
from ...runs import EXIT_FILES_FAILED, EXIT_NOT_STARTED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM

EPILOG = f"""exit status:
  {EXIT_OK}    every file ended done, no_speech or skipped
  {EXIT_FILES_FAILED}    the run finished, but some files failed (see the run log)
  {EXIT_NOT_STARTED}    the run could not start or was aborted (bad option, decoder or VAD
       model unusable, output folder not writable); no file changed state
  {EXIT_SIGINT}  stopped by SIGINT (Ctrl-C); unfinished files went back to pending
  {EXIT_SIGTERM}  stopped by SIGTERM; unfinished files went back to pending
"""


class Command(BaseCommand):
    # System checks run in handle(), so a failed one exits with the
    # "could not start" status instead of Django's generic 1.
    requires_system_checks = []
    help = (
        "Decode pending audio files, convert them to 16 kHz mono 16-bit PCM, detect speech "
        "and write the speech segments with a JSON-lines manifest."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        from argparse import RawDescriptionHelpFormatter

        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = RawDescriptionHelpFormatter
        parser.epilog = EPILOG
        return parser

    def add_arguments(self, parser) -> None:
        service.add_prepare_arguments(parser)

    def handle(self, *args, **options) -> None:
        if not options.get("skip_checks"):
            try:
                self.check()
            except SystemCheckError as exc:
                detail = str(exc).removeprefix("SystemCheckError: ")
                self._fail(f"the run could not start: {detail}", EXIT_NOT_STARTED, exc)
        interactive_progress = self._called_from_command_line and self.stderr.isatty()
        try:
            summary = service.prepare(
                options,
                stdout=self.stdout,
                style=self.style,
                progress_stream=self.stderr if interactive_progress else None,
            )
        except service.PrepareUsageError as exc:
            self._fail(str(exc), EXIT_NOT_STARTED, exc, usage=True)
        if summary is None:
            return
        if summary.exit_code in (EXIT_SIGINT, EXIT_SIGTERM) and self._called_from_command_line:
            # The process is about to exit; a repeated Ctrl-C must not turn
            # the documented status into a KeyboardInterrupt traceback.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if summary.exit_code != EXIT_OK and self._called_from_command_line:
            self._fail(service.failure_message(summary), summary.exit_code)

    def _fail(self, message: str, returncode: int, cause: BaseException | None = None, usage: bool = False) -> None:
        """End the command with `message` and `returncode`; `usage` marks an invalid option or setting.

        From the command line the message goes to stderr without Django's
        "CommandError:" prefix, because an exit status of 1, 130 or 143 is an
        outcome the user expects. Called from code, it raises CommandError.
        """
        if not self._called_from_command_line:
            raise CommandError(message, returncode=returncode) from cause
        self.stderr.write(f"error: {message}" if usage else message, style_func=self.style.ERROR)
        sys.exit(returncode)
