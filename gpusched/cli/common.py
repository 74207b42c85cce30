"""What every command module shares: the usage error, the parser class and help formatters.

Imports nothing of ours and nothing heavy: building the parser must stay instant.
"""
from __future__ import annotations

import argparse

from gpusched.cli.choices import LOG_LEVELS


class UsageError(Exception):
    """A mistake of the user's: printed as one line, exit code 2."""


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to each help, except where the help already says its default
    or there is nothing to say (None, or False for an on/off flag)."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = action.default is None or action.default is False  # `is`: 0 is worth saying
        if nothing or action.default == argparse.SUPPRESS or "default" in text.lower():
            return text
        return super()._get_help_string(action)


class RawDefaultsFormatter(argparse.RawDescriptionHelpFormatter, DefaultsFormatter):
    """DefaultsFormatter that keeps a description's and epilog's line breaks."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose every sub-command parser (sub-parsers are built with the parent's
    class) states its defaults and also takes --log-level, so it may come after the command.

    On a sub-command --log-level defaults to SUPPRESS: given there it is set, absent it leaves
    the value parsed before the command alone."""

    def __init__(self, *args, log_level_default=argparse.SUPPRESS, **kwargs):
        fmt = kwargs.get("formatter_class", argparse.HelpFormatter)
        if fmt is argparse.RawDescriptionHelpFormatter:
            kwargs["formatter_class"] = RawDefaultsFormatter
        elif fmt is argparse.HelpFormatter:
            kwargs["formatter_class"] = DefaultsFormatter
        super().__init__(*args, **kwargs)
        top = log_level_default is not argparse.SUPPRESS
        self.add_argument("--log-level", default=log_level_default, choices=LOG_LEVELS,
                          help="logging level on stderr" + (
                              "" if top else " (default: INFO, or the level given before "
                              "the command)"))


def add_endpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help="daemon endpoint: ipc:///path or tcp://127.0.0.1:PORT "
                   "(default: an ipc socket in the per-user runtime dir, or $GPUSCHED_ENDPOINT)")


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output file that cannot be written before any work is done, naming the flag,
    the problem and the fix (not a raw ``[Errno 2]`` at the end of a long run)."""
    import os
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: that is a folder: give a file name in it")
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path}: the folder {folder} does not exist: create it or "
                         "pick another path")
    if not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot write in {folder} (permission denied): pick "
                         "another path")


def check_output_dir(path: str, flag: str) -> None:
    """Refuse an output folder (made if missing) that cannot be made or written."""
    import os
    p = os.path.abspath(path)
    if os.path.exists(p) and not os.path.isdir(p):
        raise UsageError(f"{flag} {path}: that is a file, not a folder: pick a folder")
    probe = p
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot write in {probe}: pick a folder you can write")


def describe_os_error(e: OSError) -> str:
    """An OSError in the user's words: the path, what is wrong, what to do; no ``[Errno N]``."""
    import os
    name = e.filename if e.filename is not None else ""
    what = (e.strerror or type(e).__name__).lower()
    if isinstance(e, FileNotFoundError) and name:
        folder = os.path.dirname(os.path.abspath(str(name)))
        if not os.path.isdir(folder):
            return f"{name}: the folder {folder} does not exist: create it or pick another path"
        return f"{name}: no such file: check the path"
    if isinstance(e, PermissionError) and name:
        return f"{name}: permission denied: pick a path you can use"
    return f"{name}: {what}" if name else what
