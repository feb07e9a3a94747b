"""`edge-vlm` entry point. Builds the parser from the verb modules (light imports only, so --help is instant),
runs the chosen verb, and turns EdgeVLMError into one line on stderr with exit code 2."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading

from edge_vlm import __version__
from edge_vlm.errors import EdgeVLMError

# verb -> module under edge_vlm.cli. Each module defines HELP, add_arguments(parser) and run(args) -> int.
VERBS = {
    "demo": "demo",
    "ask": "ask",
    "info": "info",
    "convert": "convert",
    "train": "train",
    "data": "data",
    "export": "export",
    "bench": "bench",
    "eval": "evaluate",
    "stream": "stream",
    "serve": "serve",
}


def _available_verbs() -> dict:
    modules = {}
    for verb, name in VERBS.items():
        try:
            modules[verb] = importlib.import_module(f"edge_vlm.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"edge_vlm.cli.{name}":
                raise
    return modules


class OneLineParser(argparse.ArgumentParser):
    """argparse prints a usage block before its error; a bad flag is bad input like any other, so it gets the one
    line every refusal gets (the usage stays one `--help` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="edge-vlm", description="LLaVA-Phi from training to a robot: train, export, benchmark, stream."
    )
    parser.add_argument("--version", action="version", version=f"edge-vlm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, module in _available_verbs().items():
        verb_parser = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(verb_parser)
        verb_parser.set_defaults(_run=module.run)
    return parser


# Libraries whose exceptions mean "this file or value is bad", not "edge-vlm has a bug". Matched by the module that
# defines the exception class, so the guard imports none of them (`edge-vlm --help` stays instant).
_INPUT_ERROR_MODULES = ("PIL", "safetensors", "yaml", "json", "onnx", "onnxruntime", "google.protobuf", "tokenizers")


def is_input_error(exc: BaseException) -> bool:
    """True for errors raised by reading or decoding a user's input: OS errors (permissions, a full disk, a path under
    a file), text that is not UTF-8, and the file-format libraries' own errors."""
    if isinstance(exc, (OSError, UnicodeError)):
        return True
    return any(cls.__module__.split(".")[0] in _INPUT_ERROR_MODULES or cls.__module__ in _INPUT_ERROR_MODULES
               for cls in type(exc).__mro__ if cls not in (Exception, BaseException, object))


def describe_input_error(exc: BaseException) -> str:
    """One line that names the file (where the exception knows it) and what went wrong."""
    if isinstance(exc, OSError) and exc.filename is not None:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{where}: {exc.strerror or exc}"
    if isinstance(exc, UnicodeDecodeError):
        return f"input is not valid UTF-8 text ({exc.reason} at byte {exc.start})"
    return one_line(f"{type(exc).__name__}: {exc}")


def one_line(message: str) -> str:
    """Errors are one line on stderr: fold a multi-line library message into one."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


class Terminated(KeyboardInterrupt):
    """SIGTERM (what `timeout`, systemd and `docker stop` send), raised in the main thread: a KeyboardInterrupt, so
    it unwinds like Ctrl-C and every `with atomic_dir(...)`, `finally` and child-process guard cleans up."""


def _terminate(signum, _frame):
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises Terminated while a verb runs (the previous handler comes back after). A verb that stops
    gracefully on SIGTERM (stream, serve) installs its own handler meanwhile and puts this one back when done."""
    if threading.current_thread() is not threading.main_thread():  # signals can be handled in the main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    # No model hub on these machines and none wanted at run time: everything loads from local directories.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # bitsandbytes (on a CPU with AVX-512 BF16) tries to fetch a faster 4-bit kernel from the model hub when it is
    # imported and logs a warning when it cannot; it then uses its own kernel, so the line is noise to a user here.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    try:
        with sigterm_as_interrupt():
            code = int(args._run(args) or 0)
            sys.stdout.flush()  # a reader that went away is noticed here, inside the handler below, not at exit
        return code
    except BrokenPipeError:  # the reader went away (`edge-vlm ... | head`): stop quietly, as Unix tools do
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit; keep that from failing
        return 141
    except EdgeVLMError as exc:
        if args.debug:
            raise
        print(f"edge-vlm {args.verb}: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:
        # Last line of defence: a failure while reading a user's file that no verb turned into an EdgeVLMError yet
        # (see `is_input_error`) is still the user's input, so it gets one line too. Anything else is a bug in
        # edge-vlm and keeps its traceback.
        if args.debug or not is_input_error(exc):
            raise
        print(f"edge-vlm {args.verb}: error: {describe_input_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the shells' 128 + signal number
        if isinstance(exc, Terminated):
            print(f"edge-vlm {args.verb}: terminated", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"edge-vlm {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
