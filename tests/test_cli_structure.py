"""The command line's layout rules: argument parsers only in pixelforge/cli/, one module per command, and the
library (train/, infer/) never imports the command line."""
import ast
from pathlib import Path

import pytest

import pixelforge
from pixelforge.cli import COMMANDS, build_parser, command_parser

PACKAGE = Path(pixelforge.__file__).parent


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def test_argparse_only_in_cli():
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if "cli" not in p.relative_to(PACKAGE).parts[:1] and "argparse" in _imports(p)]
    assert offenders == []


@pytest.mark.parametrize("package", ["train", "infer"])
def test_library_does_not_import_the_command_line(package):
    offenders = [str(p.relative_to(PACKAGE)) for p in (PACKAGE / package).rglob("*.py")
                 if any(name.startswith(("..cli", "pixelforge.cli")) for name in _imports(p))]
    assert offenders == []


def test_one_module_per_command_with_the_shared_conventions():
    parser = build_parser()
    assert set(parser._subparsers._group_actions[0].choices) == set(COMMANDS)
    for command, target in COMMANDS.items():
        assert target == f"pixelforge.cli.{command}:add_parser"
        options = {a.dest: a for a in command_parser(command)._actions}
        if "precision" in options:  # every command that runs a model: the same --device and --precision
            assert options["device"].default == "auto" and options["precision"].default == "auto"
