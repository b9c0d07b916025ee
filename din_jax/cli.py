"""What every command-line entry point shares (experiments/ and data_prep/)."""

import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

from absl import app, flags

HELP_REQUESTS = ("--help", "-h", "-?", "--helpshort", "--help_short")


def format_help(doc: str, groups: Sequence[Tuple[str, Sequence[str]]], footer: str = "") -> str:
    """A command's ``--help``: its docstring, then its flags by group, one line each (name, default, help)."""
    lines = [doc.strip(), ""]
    for title, names in groups:
        names = [name for name in names if name in flags.FLAGS]
        if not names:
            continue
        lines.append("%s:" % title)
        for name in names:
            flag = flags.FLAGS[name]
            default = flag.default_as_str if flag.default is not None else ""
            shown = "--[no]%s" % name if flag.boolean else "--%s" % name
            text = " ".join(str(flag.help).split())
            lines.append("  %s%s  %s" % (shown, " (default %s)" % default if default else "", text))
        lines.append("")
    if footer:
        lines.append(footer)
    lines.append("--helpfull lists absl's own flags too.")
    return "\n".join(lines) + "\n"


def run_main(
    main: Callable[[List[str]], Any],
    fail: Callable[[str, str], None],
    check: Optional[Callable[[], Optional[str]]] = None,
    help_text: Optional[Callable[[], str]] = None,
) -> None:
    """``absl.app.run(main)`` with the errors of the command line told in one line.

    absl reports a bad flag in two lines and exits with 1, and a stray argument would print the module docstring;
    here a bad flag, a stray argument, a problem ``check()`` returns and an ``app.UsageError`` all go to
    ``fail(program, message)``, which prints ``PROGRAM: error: ...`` and exits with status 2 like every other error.
    """
    program = os.path.basename(sys.argv[0]) or "din_jax"
    if help_text is not None and any(arg in HELP_REQUESTS for arg in sys.argv[1:]):
        sys.stdout.write(help_text())
        sys.exit(0)

    def parse(argv: List[str]) -> List[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            fail(program, "%s (--helpshort lists the flags)" % str(error).replace("ERROR:: ", ""))
            raise  # not reached: fail exits

    def checked_main(argv: List[str]) -> Any:
        if len(argv) > 1:
            fail(program, "unexpected arguments: %s (every option is a --flag)" % " ".join(argv[1:]))
        problem = check() if check is not None else None
        if problem:
            fail(program, problem)
        try:
            return main(argv)
        except app.UsageError as error:
            fail(program, str(error))

    app.run(checked_main, flags_parser=parse)
