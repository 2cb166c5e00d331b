"""Errors the engine turns into exit codes."""


class BadInput(Exception):
    """Input the user must fix (config, arguments, data paths): exit code 2, nothing written."""
