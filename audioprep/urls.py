from django.urls import path

from . import views

app_name = "audioprep"

urlpatterns = [
    path("segments/<int:segment_id>/audio.wav", views.segment_audio, name="segment-audio"),
    path("runs/<int:run_id>/log.txt", views.run_log, name="run-log"),
    path("files/<int:audio_file_id>/waveform.svg", views.file_waveform, name="file-waveform"),
]
