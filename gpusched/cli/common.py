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
