"""Short import path for the pipeline's public classes: `from prepare_audio import PrepareAudio`.

Works wherever the project folder is on `sys.path`, as in `python manage.py shell`.
"""

from audioprep.prepare_audio import PrepareAudio, QueueManager, RunStartError

__all__ = ["PrepareAudio", "QueueManager", "RunStartError"]
