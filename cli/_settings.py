"""A command's settings from its parsed arguments, for every module of the command line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from livelearn.cli.logs import setup_logging

if TYPE_CHECKING:
    from livelearn.settings import Settings


def load(args: argparse.Namespace) -> Settings:
    """The settings from ``--config`` and the environment; logging left as it is."""
    from livelearn.settings import load_settings

    return load_settings(args.config)


def load_and_log(args: argparse.Namespace) -> Settings:
    """The settings, with logging set up as they ask (for the commands that run long)."""
    settings = load(args)
    setup_logging(settings.log)
    return settings
