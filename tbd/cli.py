"""`tbd` entry point, the top floor: picks the command (`tbd.commands.COMMANDS`) and runs it.

A `UserError` from any stage is printed as one line (exit status 2), without a traceback; so is a
command line that does not parse.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tbd.commands import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tbd", description="Think-Before-Draw: think (FACS chain-of-thought), annotate, draw, track.",
        epilog="`tbd COMMAND --help` lists a command's options (generated from its config).",
    )  # fmt: skip
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ArgumentError as ConfigArgumentError
    from jsonargparse import set_parsing_settings

    from tbd_core.allocator import keep_freed_memory
    from tbd_core.errors import UserError
    from tbd_core.terminal import setup_terminal

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse only the global options and the command name; the command parses the rest.
    split = next((i for i, a in enumerate(argv) if a in COMMANDS), len(argv))
    args = parser.parse_args(argv[: split + 1])
    if args.command is not None:
        # Native lines and library logs to a log file, our stages' lines to the terminal (tbd_core.terminal)
        setup_terminal(verbose=args.verbose)
    else:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # CPU forward passes without page faults (tbd_core.allocator)
    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # a field's docstring is its --help
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](argv[split + 1 :])
    except (UserError, ConfigArgumentError) as err:
        print(f"tbd {args.command}: error: {err}", file=sys.stderr)
        return 2
