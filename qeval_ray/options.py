"""Command-line options from dataclass fields: each option's default, help and group written once.

A job's config is a frozen dataclass whose fields are declared with :func:`option`; the job's
argparse parser is built from those fields by :func:`build_parser`, and the parsed namespace goes
straight back into the dataclass. So the default a user sees in ``--help`` is the default the code
uses, by construction.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any, Callable, Sequence

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, group: str | None = None, choices: Sequence[str] | None = None,
           parse: Callable[[str], Any] | None = None, metavar: str | None = None, flag: str | None = None,
           shown_default: str | None = None):
    """A config field that is also a command-line option ``--field-name`` (or ``flag``).

    ``default`` missing: a required option. ``bool`` default False: a switch (``--x``); default
    True: ``flag`` names its negation (``--no-x``). ``parse`` turns the text into the field's value
    (the type is taken from the default otherwise); ``shown_default`` is how ``--help`` shows it.
    """
    metadata = {"help": help, "group": group, "choices": choices, "parse": parse, "metavar": metavar,
                "flag": flag, "shown_default": shown_default}
    if default is _MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def comma_list(text: str) -> tuple[str, ...]:
    """``a,b`` -> ``("a", "b")`` (blanks and empty items dropped)."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


_METAVARS = {int: "N", float: "X"}


def _shown(field: dataclasses.Field) -> str | None:
    meta = field.metadata
    if meta.get("shown_default") is not None:
        return meta["shown_default"]
    value = field.default
    if value is _MISSING or value is None or isinstance(value, bool):
        return None
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def did_you_mean(value: str, known: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when ``value`` is a near miss of one of ``known``, else ``""``."""
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choice_problem(flag: str, value: str, choices: Sequence[str]) -> str | None:
    """The one line saying a value is not one of ``choices``, with a suggestion; None if it is."""
    if value in choices:
        return None
    return f"{flag} {value!r}: choose one of {', '.join(choices)}{did_you_mean(value, choices)}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """argparse's one line, with the option the user probably meant when one is unknown."""
        if message.startswith("unrecognized arguments:"):
            known = [s for a in self._actions for s in a.option_strings]
            hints = [f"{word}{did_you_mean(word.split('=')[0], known)}" for word in message.split()[2:]
                     if word.startswith("--")]
            if any("did you mean" in h for h in hints):
                message += "; " + ", ".join(h for h in hints if "did you mean" in h)
        super().error(message)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wider option column; descriptions and epilogs keep their line breaks; model ids and paths are
    never broken at their hyphens."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=100)

    def _split_lines(self, text, width):
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser(config_cls, *, prog: str, description: str, epilog: str | None = None,
                 groups: Sequence[str] = (), version: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of ``config_cls`` that was declared by :func:`option`.

    Groups are shown in the order of ``groups``, then in the order fields first name them.
    """
    parser = _Parser(prog=prog, description=description, epilog=epilog, formatter_class=_Formatter,
                     allow_abbrev=False)
    if version:
        parser.add_argument("--version", action="version", version=version)
    sections: dict[str, argparse._ArgumentGroup] = {name: parser.add_argument_group(name) for name in groups}
    for field in dataclasses.fields(config_cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        group = meta["group"]
        if group and group not in sections:
            sections[group] = parser.add_argument_group(group)
        target = sections[group] if group else parser
        flag = meta["flag"] or "--" + field.name.replace("_", "-")
        text = meta["help"]
        shown = _shown(field)
        if shown is not None:
            text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": field.name, "help": text}
        if isinstance(field.default, bool):
            kwargs["action"] = "store_false" if field.default else "store_true"
        else:
            if field.default is _MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = field.default
            parse = meta["parse"]
            if parse is None and field.default not in (_MISSING, None) and not isinstance(field.default, str):
                parse = type(field.default)
            if parse is not None:
                kwargs["type"] = parse
            # Choices are shown, not enforced here: the config's own check reports every bad
            # value of a command line at once, with what to choose.
            choices = meta["choices"]
            kwargs["metavar"] = meta["metavar"] or ("{" + ",".join(choices) + "}" if choices
                                                    else _METAVARS.get(parse, field.name.upper()))
        target.add_argument(flag, **kwargs)
    return parser


def parse_config(config_cls, parser: argparse.ArgumentParser, argv: Sequence[str] | None = None):
    """Parse ``argv`` into a ``config_cls`` instance (its own checks are the caller's to run)."""
    return config_cls(**vars(parser.parse_args(argv)))
