"""Errors that are the user's to fix.

Every :class:`UserError` reaching the command line is printed as one message and turns into exit
code 2, with no traceback and nothing half-written.  Code raises it for bad configs, unknown task
names, missing data folders, unreadable files and invalid run directories.
"""


class UserError(Exception):
    """A problem with the user's input (config, paths, names); the CLI exits with code 2."""


class ConfigError(UserError):
    """An invalid configuration value; the message names the key and the allowed values."""


def require_path(value: object, label: str, error: type[UserError] = UserError) -> None:
    """Refuse an empty path argument: ``error("<label>: empty path")`` (default :class:`UserError`).

    Only a value whose ``str()`` is empty (the empty string) is refused; ``None`` (an option not
    given) and ``Path`` objects pass, since ``str()`` of them is never empty.
    """
    if not str(value):
        raise error(f"{label}: empty path")
