"""Error types shared by every layer."""

from __future__ import annotations


class EipFailoverError(Exception):
    """Base class of every error the daemon reports to its user."""


class ConfigError(EipFailoverError):
    """The configuration is invalid; ``problems`` holds one ``key.path: message`` line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems))


class ProviderError(EipFailoverError):
    """A cloud call failed.

    ``retryable`` says whether the same call may succeed later (throttling, 5xx, transport errors); ``code``
    is the cloud's error code when it sent one; ``timed_out`` says the call got no answer in time.
    """

    def __init__(self, message: str, *, retryable: bool, code: str | None = None, timed_out: bool = False) -> None:
        self.retryable = retryable
        self.code = code
        self.timed_out = timed_out
        super().__init__(message)


class NotLeader(ProviderError):
    """A cloud mutation refused before it was sent: this daemon cannot prove that it leads its cluster."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, code="NotLeader")


class RegistryError(EipFailoverError):
    """A plug-in named in the config could not be loaded."""
