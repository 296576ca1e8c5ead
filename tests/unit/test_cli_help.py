"""Every option of every `sentiment` command says what it does in `--help` (a new user reads only that)."""

import argparse

from sentiment.cli import build_parser


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))


def test_every_option_has_help_text():
    missing = [f"sentiment {' '.join(path)} {action.option_strings[-1]}"
               for path, parser in _commands(build_parser())
               for action in parser._actions
               if action.option_strings and not isinstance(action, argparse._HelpAction) and not action.help]
    assert not missing, f"options without help text: {missing}"


def test_every_commands_help_prints():
    """argparse formats help strings with %: a literal "80 %" in one broke `sentiment bench --help`."""
    broken = {}
    for path, parser in _commands(build_parser()):
        try:
            text = parser.format_help()
        except (TypeError, ValueError, KeyError) as error:
            broken[" ".join(("sentiment",) + path)] = repr(error)
        else:
            assert text.startswith("usage: sentiment"), path
    assert not broken, f"--help fails: {broken}"
