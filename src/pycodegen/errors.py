"""User-facing errors: the CLI prints their message (no traceback) and exits with status 2."""


class PycodegenError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""


class ConfigError(PycodegenError):
    """A config, recipe or flag is invalid (unknown key, bad value)."""


class DataError(PycodegenError):
    """A dataset file is malformed; the message names the file and line."""


class ModelNotFoundError(PycodegenError):
    """A model reference is neither a zoo name, a local directory nor a .gguf file."""


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> ConfigError:
    """The error for a name that is not in a registry, listing the valid names.

    >>> str(unknown_name("task", "lm", ["char-stream", "lm-windows"]))
    "unknown task 'lm'; valid: char-stream, lm-windows"
    """
    return ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
