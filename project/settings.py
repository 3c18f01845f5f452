"""Settings of the demo project that hosts the audioprep app.

Every value comes from the environment (or a `.env` file beside
`manage.py`) through django-environ; `.env.example` lists them all.
"""

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# The default key is only good for a local demo; set SECRET_KEY anywhere else.
SECRET_KEY = env.str("SECRET_KEY", default="audioprep-insecure-local-demo-key")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

VAR_DIR = Path(env.str("AUDIOPREP_VAR_DIR", default=str(BASE_DIR / "var")))

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "audioprep",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "project.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'audioprep.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # WAL lets the admin read while a run writes; IMMEDIATE transactions take
    # the write lock up front, so concurrent writers wait for `timeout`
    # seconds instead of failing with "database is locked" mid-transaction.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": env.int("SQLITE_TIMEOUT", default=30),
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # A file, not memory, so worker threads and subprocesses of the tests share
    # it; one per test process, so concurrent test runs do not collide.
    DATABASES["default"]["TEST"] = {"NAME": env.str("SQLITE_TEST_NAME", default=str(VAR_DIR / f"test-{os.getpid()}.sqlite3"))}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=0))

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"

AUDIOPREP = {
    "OUTPUT_DIR": env.str("AUDIOPREP_OUTPUT_DIR", default=str(VAR_DIR / "output")),
    "NUM_WORKERS": env.int("AUDIOPREP_NUM_WORKERS", default=2),
    "VAD_MODEL": env.str("AUDIOPREP_VAD_MODEL", default="webrtc"),
    "MAX_ATTEMPTS": env.int("AUDIOPREP_MAX_ATTEMPTS", default=3),
    "LEASE_SECONDS": env.int("AUDIOPREP_LEASE_SECONDS", default=600),
    "START_METHOD": env.str("AUDIOPREP_START_METHOD", default="spawn"),
    "STOP_GRACE_SECONDS": env.float("AUDIOPREP_STOP_GRACE_SECONDS", default=10.0),
    "DECODE_HELPER_MIN_SECONDS": env.float("AUDIOPREP_DECODE_HELPER_MIN_SECONDS", default=600.0),
    "TEST_HOOK": env.str("AUDIOPREP_TEST_HOOK", default=""),
    # Only the policy values set in the environment; the rest keep the
    # defaults of audioprep.pipeline.config.PrepConfig.
    "SEGMENTATION": {
        name: cast(env.str(variable))
        for name, variable, cast in (
            ("vad_aggressiveness", "AUDIOPREP_VAD_AGGRESSIVENESS", int),
            ("min_speech_ms", "AUDIOPREP_MIN_SPEECH_MS", int),
            ("min_silence_ms", "AUDIOPREP_MIN_SILENCE_MS", int),
            ("pad_ms", "AUDIOPREP_PAD_MS", int),
            ("max_segment_s", "AUDIOPREP_MAX_SEGMENT_S", float),
            ("energy_gate_db", "AUDIOPREP_ENERGY_GATE_DB", float),
        )
        if env.str(variable, default="")
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
