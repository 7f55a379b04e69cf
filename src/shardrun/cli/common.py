"""What every command shares: its parser (help with defaults, --version, --verbose), logging set-up,
error-to-exit mapping, and flag value types (a bad value is refused by argparse: exit 2, no traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shardrun.cli import SUBCOMMANDS
from shardrun.early_signals import STOP_SIGNALS, EarlySignals
from shardrun.errors import EXIT_CLOSED_PIPE, EXIT_CRASH, EXIT_INTERRUPTED, ShardrunError, StopSignalReceived
from shardrun.results.tolerance import FailedTolerance
from shardrun.storage.durability import escaped_storage_failure
from shardrun.units import MIB, heap_bytes

log = logging.getLogger("shardrun")


def shardrun_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("shardrun")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Every flag's help ends with its default, when it has one worth saying (not None, not False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text, default = action.help or "", action.default
        if "default" in text or any(default is none for none in (None, False, argparse.SUPPRESS)) \
                or not action.option_strings:
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(d) for d in default)
        return f"{text} (default: {default})"


def subcommand(name: str) -> str:
    """`shardrun SUB`'s SUB of the command whose console name is `name`."""
    return next(sub for sub, module, _ in SUBCOMMANDS if module == name)


def one_command() -> bool:
    """This process was started as `shardrun SUB` (the console script or `python -m shardrun`)."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return started.stem == "shardrun" or started.parts[-2:] == ("shardrun", "__main__.py")


def command_spelling(name: str) -> str:
    """The command `name` (run_production, ...) as a hint writes it so that it runs, the way this process
    was started: `python3 tools/<name>.py` from a tools/ shim; else `shardrun SUB` or the console name
    `name`, bare when on PATH beside this Python, else by its full path (a .venv not activated), else
    `python -m shardrun SUB`."""
    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is not None and started.suffix == ".py" and started.parent.name == "tools" \
            and (started.parent / f"{name}.py").is_file():
        return f"{'python3' if shutil.which('python3') else sys.executable} {started.parent / f'{name}.py'}"
    sub = subcommand(name)
    script, rest = ("shardrun", f" {sub}") if one_command() else (name, "")
    beside = Path(sys.executable).parent / script
    found = shutil.which(script)
    if found is not None and Path(found).parent == beside.parent:
        return script + rest
    if beside.is_file():
        return f"{beside}{rest}"
    return f"{sys.executable} -m shardrun {sub}"


def command_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The parser every command starts from: its prog as it was started (`shardrun SUB` or its console
    name), defaults in --help, --version, --verbose."""
    prog = f"shardrun {subcommand(name)}" if one_command() else name
    p = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpWithDefaults)
    p.add_argument("--version", action="version", version=f"%(prog)s (shardrun {shardrun_version()})",
                   help="print shardrun's version and exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages too")
    return p


def guarded(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None,
            early: EarlySignals | None = None,
            parse: Callable[[Sequence[str] | None], argparse.Namespace] | None = None,
            stop_signals_interrupt: bool = True) -> int:
    """Run a command: its errors become their exit codes with one `error:` paragraph, never a traceback
    (but for a bug: exit 70). With `stop_signals_interrupt` a stop signal interrupts the command like
    Ctrl-C (until it installs its own handlers), and so does one `early` noted during the imports; the
    shard passes False: its drain takes `early`'s signals itself."""
    try:
        if stop_signals_interrupt:
            for sig in STOP_SIGNALS:  # SIGTERM and SIGHUP raise StopSignalReceived, as SIGINT KeyboardInterrupt
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else _interrupt)
            noted = early.first_stop() if early is not None else None
            if noted is not None:
                raise StopSignalReceived(noted.name)
        args = (parse or parser.parse_args)(argv)
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        code = main(args)
        sys.stdout.flush()  # here, not at the interpreter's exit, so that a closed pipe is caught below
        return code
    except (KeyboardInterrupt, StopSignalReceived) as exc:
        name = exc.signal_name if isinstance(exc, StopSignalReceived) else "SIGINT"
        print(f"error: interrupted by {name}. What it was writing is whole or not there at all (every write is"
              " atomic); run the same command again to do it.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout to /dev/null, so that the interpreter's own flush at exit does not fail again and print a
        # traceback (the Python documentation's advice on SIGPIPE)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_CLOSED_PIPE
    except ShardrunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # not swallowed: logged with its traceback, and a distinct exit code for the launcher
        storage_failure = escaped_storage_failure(exc)
        if storage_failure is not None:  # a full or read-only disk met by a write without a guard of its own
            log.debug("the failed write", exc_info=True)
            print(f"error: {storage_failure}", file=sys.stderr)
            return storage_failure.exit_code
        log.exception("unexpected error; please report it with this traceback")
        return EXIT_CRASH


def _interrupt(signum: int, _frame: object) -> None:
    raise StopSignalReceived(signal.Signals(signum).name)


def heap_size(text: str) -> str:
    """A JVM heap size such as 512m or 2g, or auto (chosen from the data, as jvm.xmx: auto in a config)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        heap_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a JVM heap size such as 512m or 2g, or auto") from None
    return text


def mib_size(text: str) -> int | None:
    """--mem, --merge-mem: a size such as 4g, in MiB."""
    try:
        return max(heap_bytes(text) // MIB, 1) if text else None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 4g or 3500m") from None


def number_type(kind: type, what: str, rule: str, at_least: float | None = None, above: float | None = None,
                at_most: float | None = None) -> Callable[[str], float | int]:
    """An argparse type for a finite number within bounds; `rule` says the bounds in words for the error."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value != value or value in (float("inf"), float("-inf")):  # nan is not equal to itself
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        if ((at_least is not None and value < at_least) or (above is not None and value <= above)
                or (at_most is not None and value > at_most)):
            raise argparse.ArgumentTypeError(f"{rule}, got {text!r}")
        return value

    return parse


positive_int = number_type(int, "a whole number", "must be at least 1", at_least=1)
non_negative_int = number_type(int, "a whole number", "must be 0 or more", at_least=0)
positive_seconds = number_type(float, "a number of seconds", "must be a number of seconds above 0", above=0)
non_negative_seconds = number_type(float, "a number of seconds", "must be a number of seconds, 0 or more", at_least=0)
nice_level = number_type(int, "a whole number", "lowers the CPU priority by 0 to 19", at_least=0, at_most=19)
thread_count = number_type(int, "a whole number", "--threads takes a positive number of threads", at_least=1)
pilot_size = number_type(int, "a whole number", "--pilot takes a positive number of users", at_least=1)


def failed_tolerance(text: str) -> FailedTolerance:
    """--max-failed: a number of users ("5") or a share of the users ("2%")."""
    try:
        return FailedTolerance.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_max_failed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-failed", type=failed_tolerance, default=FailedTolerance(), metavar="N|P%",
                   help="the failed users a result set may have and still pass validation: a number of users (5)"
                        " or a share of them (2%%); default 0: any failed user fails the validation (exit 5)")
