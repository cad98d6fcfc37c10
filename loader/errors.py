"""Exceptions of the loader. Each carries the exit code the command line returns for it."""

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2


class LoaderError(Exception):
    """Base of loader errors; the message is one line naming the file and the field."""

    exit_code = EXIT_USAGE


class ConfigError(LoaderError):
    """The loader configuration is missing, unreadable or invalid."""


class InputError(LoaderError):
    """An input (engine, dataset, config) is missing, unreadable or refused."""


class PolicyError(LoaderError):
    """The approved list is missing, malformed or not trusted."""


class ReportError(LoaderError):
    """A report is malformed or fails verification."""

    exit_code = EXIT_REJECTED


class RunnerError(LoaderError):
    """The workload could not be started."""


class PublishError(LoaderError):
    """A report could not be stored or delivered."""


class TrustError(LoaderError):
    """A party's signature, a data-access grant or a sealed file does not verify or open."""

    exit_code = EXIT_REJECTED
