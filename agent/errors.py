"""The agent's exception hierarchy: one root, never raised itself; subclasses carry data.

Every error message names the thing that is wrong (file, key, line, URI, topic) and
says what to do about it, so that a technician can act on the one line the CLI prints.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class ConfigError(AgentError):
    """A configuration file or flag is invalid."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
        fix: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = file + (f":{line}" if line else "")
        if key:
            where = f"{where} [{key}]" if where else f"[{key}]"
        super().__init__(f"{where}: {message}" if where else message, fix=fix)
        self.file = file
        self.key = key
        self.line = line


class ModelError(AgentError):
    """A model file or bundle cannot be loaded or run."""

    def __init__(self, message: str, *, path: str, fix: str | None = None) -> None:
        super().__init__(f"model {path}: {message}", fix=fix)
        self.path = path


class SourceError(AgentError):
    """A capture source cannot be opened or read."""

    def __init__(self, message: str, *, uri: str, fix: str | None = None) -> None:
        super().__init__(f"source {uri}: {message}", fix=fix)
        self.uri = uri


class StorageError(AgentError):
    """The local cache (outbox database) cannot be opened or written."""

    def __init__(self, message: str, *, path: str, fix: str | None = None) -> None:
        super().__init__(f"storage {path}: {message}", fix=fix)
        self.path = path


class BlobTooLarge(StorageError):
    """A blob larger than the outbox's budget could ever hold: nothing is evicted for it, and
    retrying cannot help (the writer drops it and commits the rest)."""


class RecordRejected(AgentError):
    """An incoming record failed validation at ingest."""

    def __init__(self, message: str, *, topic: str) -> None:
        super().__init__(f"topic {topic}: {message}")
        self.topic = topic
        self.reason = message


class KernelError(AgentError):
    """A native kernel was called with bad arguments or failed."""
