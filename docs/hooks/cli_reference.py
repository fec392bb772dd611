"""MkDocs hook: the command-line reference page (reference/cli.md), rendered at build time from the `segicl` argparse
parser (`segicl_commands.cli.build_parser`), so that it always shows the commands and flags the code has. The
committed reference/cli.md is a placeholder (for readers of the Markdown); the built page replaces its text.

Every subcommand, nested ones included (`segicl data import`, `segicl bench quality`, ...), gets a heading, its
one-line help and its full `--help` text.
"""
from __future__ import annotations

import argparse
import os
from contextlib import contextmanager

PAGE = "reference/cli.md"
WIDTH = "100"  # argparse wraps --help at the terminal's width: a fixed width gives the same page everywhere


@contextmanager
def help_width(columns: str):
    """argparse reads $COLUMNS when it formats help; set it for the render only."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = columns
    try:
        yield
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand of `parser`, in the order they were added."""
    found = []
    for action in parser._actions:  # argparse keeps subparsers here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def render_parser(name: str, summary: str, parser: argparse.ArgumentParser, level: int) -> list[str]:
    lines = [f"{'#' * level} `{name}`", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ("" if summary.endswith(".") else "."), ""]
    lines += ["```text", parser.format_help().rstrip(), "```", ""]
    for sub_name, sub_summary, sub in subcommands(parser):
        lines += render_parser(f"{name} {sub_name}", sub_summary, sub, min(level + 1, 4))
    return lines


def render() -> str:
    from segicl_commands.cli import build_parser

    with help_width(WIDTH):
        parser = build_parser()
        lines = ["# Command line", "",
                 "Generated from the `segicl` argument parser when the site is built (`make docs`), so it shows the "
                 "commands and flags of this version. Every command also prints this text with `--help`.", "",
                 "```text", parser.format_help().rstrip(), "```", ""]
        for name, summary, sub in subcommands(parser):
            lines += render_parser(f"segicl {name}", summary, sub, 2)
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown, page, config, files):
    return render() if page.file.src_uri == PAGE else markdown
