"""The error tree. One root, leaves that also subclass the standard type.

Every error carries one readable line. Constructors take only that line, so errors pickle
intact across Ray actor boundaries and are re-raised on the caller's side as the same class.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def strip_ansi(text: str) -> str:
    """`text` without terminal colour codes (Ray and Harbor colour their messages)."""
    return _ANSI.sub("", text)


class HarborRayError(Exception):
    """Root of every error harbor_ray raises on purpose."""

    def __str__(self) -> str:
        # One line, always: a multi-line message would become a traceback wall in logs.
        text = super().__str__()
        return text.splitlines()[0] if text else type(self).__name__


class ConfigError(HarborRayError, ValueError):
    """A config value is wrong; the message names the key and the fix."""


class TaskError(HarborRayError, ValueError):
    """A Harbor task directory is malformed; the message names the file and the fix."""


class BackendUnavailable(HarborRayError, ConnectionError):
    """The Docker daemon or Kubernetes API cannot be reached or refuses us."""


class CircuitOpen(BackendUnavailable):
    """A host failed too often in a row; creations there are paused for a while."""


class ImageBuildError(HarborRayError, RuntimeError):
    """An environment image failed to build; the message ends with the build log's tail."""


class SandboxStartError(HarborRayError, RuntimeError):
    """A sandbox could not be created or did not become ready."""


class SandboxGone(HarborRayError, RuntimeError):
    """The sandbox (container, pod or its actor) died or vanished while in use."""


class ExecTimeout(HarborRayError, TimeoutError):
    """A command ran past its timeout and was killed."""


class TransferError(HarborRayError, OSError):
    """An upload or download failed (missing path, bad archive)."""


class BaseImageError(HarborRayError, RuntimeError):
    """A base image could not be built on this machine."""


class RewardParseError(HarborRayError, ValueError):
    """reward.txt / reward.json is empty or not what Harbor accepts."""
