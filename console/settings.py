"""Haven console settings.

Embedded defaults need nothing but a local Redis: SQLite in ``var/``, a secret key generated
on first run and kept in ``var/``. Every default can be overridden by an environment variable:

- ``DATABASE_URL``  — e.g. ``postgres://haven:pw@db/haven`` (needs the ``postgres`` extra)
- ``REDIS_URL``     — Celery broker (default ``redis://127.0.0.1:6379/0``)
- ``HAVEN_VAR_DIR`` — where state lives (default ``<repo>/var``)
- ``HAVEN_DEBUG``, ``HAVEN_ALLOWED_HOSTS`` (comma separated), ``HAVEN_SECRET_KEY``
- ``HAVEN_TLS=1``   — served over HTTPS only (deploy/install): redirect to HTTPS, secure session
  and CSRF cookies, HSTS for a year with subdomains (``HAVEN_HSTS_SECONDS``)
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("HAVEN_VAR_DIR", BASE_DIR / "var"))
# var/ holds the secret key and the database: only its owner may enter it (0700).
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
if VAR_DIR.stat().st_uid == os.getuid():
    VAR_DIR.chmod(0o700)


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (or make an existing one 0600), before SQLite opens
    it: its journal files take the same mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    if path.stat().st_uid == os.getuid():
        path.chmod(0o600)


def _secret_key() -> str:
    """The key from the environment, else the one kept in var/ (created once, mode 0600)."""
    if key := os.environ.get("HAVEN_SECRET_KEY"):
        return key
    path = VAR_DIR / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(50))
    _private_file(path)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = os.environ.get("HAVEN_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("HAVEN_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(
    ","
)
if os.environ.get("HAVEN_TLS") == "1":  # deploy/install: gunicorn serves HTTPS itself
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("HAVEN_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_htmx",
    "console.core",
    "console.clusters",
    "console.storage",
    "console.services",
    "console.jobs",
    "console.events",
    "console.ha",
    "console.monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "console.urls"
WSGI_APPLICATION = "console.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
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

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'haven.sqlite3'}"),
        conn_max_age=60,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if Path(DATABASES["default"]["NAME"]).parent == VAR_DIR:
        _private_file(Path(DATABASES["default"]["NAME"]))
    # A file, not memory, so that the live tests' worker processes see the test database;
    # one per test run, so that runs side by side never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}
    # Several Celery workers and the web server write at once: wait for the lock, don't fail.
    # WAL: readers (pages, the API) never block the runner's and the drainer's writes, nor
    # they the readers; a long page query no longer holds the HA loop (issue 17).
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTHENTICATION_BACKENDS = ["console.core.auth.LockoutBackend"]
# Sign-in lockout (console/core/auth.py): this many failures within the window, for one user
# name or from one address, lock its sign-ins for the lockout time; POST /api/token/ is also
# throttled per address.
HAVEN_LOGIN_MAX_FAILURES = int(os.environ.get("HAVEN_LOGIN_MAX_FAILURES", "10"))
HAVEN_LOGIN_WINDOW_S = int(os.environ.get("HAVEN_LOGIN_WINDOW_S", "600"))
HAVEN_LOGIN_LOCKOUT_S = int(os.environ.get("HAVEN_LOGIN_LOCKOUT_S", "900"))
HAVEN_LOGIN_RATE = os.environ.get("HAVEN_LOGIN_RATE", "30/min")
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve static files straight from static/ and the apps: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Token first: an anonymous request then gets 401 with a WWW-Authenticate header.
        "console.core.auth.HashedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PARSER_CLASSES": [
        "console.core.parsers.BoundedJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["console.core.permissions.RolePermission"],
    "DEFAULT_PAGINATION_CLASS": "console.core.pagination.HavenPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["console.core.filtersets.FilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "console.core.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Haven API",
    "DESCRIPTION": "Clusters, hosts, fence devices, shared storage, failover domains, VM services, "
    "jobs and the event log of a Haven HA console.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {},
}

# Celery: the console's own queue is ``console``; each host's agent consumes ``agent.<host>``.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_DEFAULT_QUEUE = "console"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_IGNORE_RESULT = True
# kombu's Redis transport puts a message that stays unacknowledged this long back in its queue
# (a worker killed with messages it had prefetched). Console tasks are acknowledged when they
# start and take about a second, so a minute never redelivers a task that is still running, and
# what a dead worker held comes back in a minute, not kombu's default hour (or, with the
# append-only file, after a Redis restart that interrupted the restore).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
# Back on the broker within about a second of its return, not kombu's up to 30 s (the agents too).
CELERY_WORKER_CONSUMER = "agent.reconnect:FastReconnectConsumer"
# A command to an agent expires this long after it was sent (Celery `expires`, checked by the
# agent's worker on its own clock: keep the clocks in sync). Agents acknowledge a command when
# they take it (the executor runs it, a live migration for minutes if need be), so only commands
# a dying agent had prefetched stay unacknowledged; those come back after the agents'
# visibility timeout (kombu's default, an hour), long expired: a stale command never runs.
HAVEN_COMMAND_TTL_S = int(os.environ.get("HAVEN_COMMAND_TTL_S", "60"))
# No result backend, so no daily `celery.backend_cleanup` (the worker runs Haven's tasks only).
CELERY_RESULT_EXPIRES = None
# celery's PersistentScheduler, with Redis restarts as one warning line (console/beat.py)
CELERY_BEAT_SCHEDULER = "console.beat:Scheduler"
CELERY_BEAT_SCHEDULE = {
    "ha-runner": {"task": "haven.console.tick", "schedule": 1.0, "options": {"expires": 2}},
}

# The HA engine's timers (DESIGN.md §2): heartbeat every second, unreachable after 3 missed.
HAVEN_HEARTBEAT_INTERVAL_S = float(os.environ.get("HAVEN_HEARTBEAT_INTERVAL_S", "1"))
HAVEN_MISSED_HEARTBEATS = int(os.environ.get("HAVEN_MISSED_HEARTBEATS", "3"))
# Heartbeats later than this many intervals make a host "late" for the fencing-storm guard
# (every host late at once: nobody is fenced). Slow hosts (TCG VMs on a loaded machine) lag
# all at once for seconds: the storage lab's test raises it.
HAVEN_LATE_HEARTBEATS = float(os.environ.get("HAVEN_LATE_HEARTBEATS", "1.5"))

# The agent that runs beside the console (for fencing when no host of the cluster is left).
HAVEN_CONSOLE_AGENT = os.environ.get("HAVEN_CONSOLE_AGENT", "haven-console")
# Operations wake the HA runner at once (off in unit tests, which drive the runner by hand).
HAVEN_WAKE_ON_COMMAND = os.environ.get("HAVEN_WAKE_ON_COMMAND", "1") == "1"
# What a fence does to a failed host: "reboot" (rgmanager's default) or "off".
HAVEN_FENCE_ACTION = os.environ.get("HAVEN_FENCE_ACTION", "reboot")
# How the bootstrap sets up live migration: "tls" (a CA per cluster, console/bootstrap/pki.py)
# or "tcp" (unauthenticated libvirtd, as before).
HAVEN_MIGRATION_TRANSPORT = os.environ.get("HAVEN_MIGRATION_TRANSPORT", "tls")
# A graceful guest shutdown waits this long before the guest is destroyed.
# Who may scrape /metrics without logging in: addresses or networks, comma separated.
HAVEN_METRICS_ALLOW = os.environ.get("HAVEN_METRICS_ALLOW", "")
# Alert e-mail goes through this SMTP server (Django's EMAIL_* settings).
EMAIL_HOST = os.environ.get("HAVEN_SMTP_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("HAVEN_SMTP_PORT", "25"))
EMAIL_HOST_USER = os.environ.get("HAVEN_SMTP_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("HAVEN_SMTP_PASSWORD", "")
EMAIL_USE_TLS = os.environ.get("HAVEN_SMTP_TLS", "0") == "1"
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = os.environ.get("HAVEN_MAIL_FROM", "haven@localhost")
HAVEN_STOP_TIMEOUT_S = int(os.environ.get("HAVEN_STOP_TIMEOUT_S", "30"))
# Extra environment of every agent the SSH bootstrap installs, e.g. {"LVM_SYSTEM_DIR": "/srv/lvm"}
# (console/bootstrap/ssh.py): names ^[A-Z][A-Z0-9_]{0,63}$, values on one line.
HAVEN_AGENT_ENV: dict[str, str] = {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("HAVEN_LOG_LEVEL", "INFO")},
}
