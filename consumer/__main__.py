"""`python -m consumer NAME` runs an installed consumer; `python -m consumer run FILE` a file.

Installed consumers, the built-in ones included, are found through the
entry-point group `slipstream.consumers`: each entry names a `Consumer`.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from broker import cli
from broker.errors import ConfigError
from consumer.api import Consumer, find_consumer

GROUP = "slipstream.consumers"


def installed() -> dict[str, str]:
    return {entry.name: entry.value for entry in entry_points(group=GROUP)}


def usage(prog: str = "python -m consumer") -> str:
    names = "\n".join(f"  {name:<12} ({value})" for name, value in sorted(installed().items()))
    return (f"usage: {prog} NAME [options]      run an installed consumer\n"
            f"       {prog} run FILE [options]  run a consumer written in FILE\n"
            f"       {prog} NAME --help         its options\n\n"
            f"installed consumers (entry-point group {GROUP!r}):\n{names}")


def load_installed(name: str) -> Consumer:
    entry = next((e for e in entry_points(group=GROUP) if e.name == name), None)
    if entry is None:
        raise ConfigError(f"no consumer named {name!r} is installed "
                              f"(installed: {', '.join(sorted(installed())) or 'none'})")
    app = entry.load()
    if not isinstance(app, Consumer):
        raise ConfigError(f"entry point {name} = {entry.value} is not a Consumer")
    return app


def load_file(path_text: str) -> Consumer:
    path = Path(path_text)
    if not path.is_file():
        raise ConfigError(f"no such file: {path_text}")
    spec = importlib.util.spec_from_file_location(f"slipstream_plugin_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path_text} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the plugin's own error, whatever it is
        line = getattr(exc, "lineno", None)
        where = f"{path_text}, line {line}" if line else path_text
        raise ConfigError(f"cannot load {where}: {type(exc).__name__}: {exc}") from None
    return find_consumer(vars(module), path_text)


def main(argv: list[str] | None = None, prog: str = "python -m consumer") -> int:
    """`prog` names the command in help and errors (`slipstream consumer` runs this too)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(prog))
        return cli.EXIT_OK if argv else cli.EXIT_USAGE
    try:
        if argv[0] == "run":
            if argv[1:2] in (["-h"], ["--help"]):
                print(f"usage: {prog} run FILE [options]\n\nRun the Consumer defined in FILE "
                      "(docs/writing-a-consumer.md) with the options every consumer has;\n"
                      f"`{prog} run FILE --help` lists them, with the consumer's own.")
                return cli.EXIT_OK
            if len(argv) < 2 or argv[1].startswith("-"):
                return cli.fail(f"{prog} run", "give the consumer's FILE", cli.EXIT_USAGE)
            app, rest, prog = load_file(argv[1]), argv[2:], f"{prog} run {argv[1]}"
        else:
            app, rest, prog = load_installed(argv[0]), argv[1:], f"{prog} {argv[0]}"
    except ConfigError as exc:
        return cli.fail(prog, str(exc), cli.EXIT_USAGE)
    return app.run(rest, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
