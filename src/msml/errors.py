"""The expected failures: one base class, one exit code per kind, and credential masking for anything printed.

The CLI catches `MsmlError` once (`msml.cli.main`) and prints one line on stderr with the class's exit
code; anything else is a bug and shows a traceback (without local variables, which may hold secrets).

Exit codes (README "Exit codes" lists the same):
  0 success · 1 a check failed (stale files, failed requests) · 2 bad input: usage, data, contract ·
  3 tracking server / registry · 4 port busy or process conflict · 5 a system program is missing ·
  6 a server did not become ready · 7 export · 8 a pipeline step failed (training, tuning, the CI job, a container
  build) · 9 an evidence capture failed (a blank or missing screenshot, Grafana)
"""

from __future__ import annotations

import re


class MsmlError(Exception):
    """A check failed (stale generated files, failed requests). The base of every expected failure: its message
    says exactly what and what to do."""

    exit_code = 1


class DataError(MsmlError):
    """Input data (or a contract) that cannot be used."""

    exit_code = 2


class TrackingError(MsmlError):
    """The tracking server or the model registry cannot be used."""

    exit_code = 3


class PortBusyError(MsmlError):
    """A port we must listen on is held by another process (or a pid file names a live process)."""

    exit_code = 4


class MissingProgramError(MsmlError):
    """A system program (Prometheus, Alertmanager, Chromium…) is not installed."""

    exit_code = 5


class ServerError(MsmlError):
    """A server we started exited or did not answer in time."""

    exit_code = 6


class ExportError(MsmlError):
    """The course's export cannot be written."""

    exit_code = 7


class PipelineError(MsmlError):
    """A pipeline step ran and failed: training, tuning, the CI job, a container build. Not the user's input."""

    exit_code = 8


class CaptureError(MsmlError):
    """An evidence capture failed: a page that never showed its content, a blank image, Grafana not ready."""

    exit_code = 9


# scheme://user:password@host or scheme://token@host → the secret part replaced; the host stays readable
_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^/\s:@]+)(?P<password>:[^/\s@]*)?@")
# A bare user part this long is taken for a token (GitHub/DagsHub tokens are 40+ characters); a short one is a
# user name such as `postgres`, kept so that printed commands (`--storage postgresql://postgres@…`) still work.
_TOKEN_MIN_LENGTH = 20


def _masked(m: re.Match) -> str:
    if m["password"] is None and len(m["user"]) < _TOKEN_MIN_LENGTH:
        return m[0]
    return f"{m['scheme']}***@"


def mask(text: str) -> str:
    """`text` with the credentials of every URI in it replaced by `***`."""
    return _CREDENTIALS.sub(_masked, text)


class MaskingStream:
    """A text stream that masks credentials before writing (wraps sys.stdout / sys.stderr in the CLI)."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(mask(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)
