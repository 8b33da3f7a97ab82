"""The `legaltune` command: one subcommand per stage (:mod:`legaltune.cli.commands`), parsed by
:mod:`legaltune.cli.parser`; :func:`main` runs one and maps what went wrong to an exit code."""

from __future__ import annotations

import sys

from legaltune.cli.exit_codes import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE
from legaltune.cli.parser import build_parser
from legaltune.distributed.env import rank_prefix
from legaltune.distributed.sync import ReportedByRankZero
from legaltune.errors import UserError


def _user_os_error(exc: OSError) -> bool:
    """An OS error the user fixes (a permission, a read-only or full disk), not a bug."""
    import errno

    return isinstance(exc, PermissionError) or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def main(argv: list[str] | None = None) -> int:
    """Run one command; exit codes: 0 ok, 1 check failed, 2 bad input, 3 internal failure, 130 Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # re-executed per rank by --nproc
    try:
        return args.func(args)
    except ReportedByRankZero:
        return EXIT_USAGE  # rank 0 of this distributed run printed why
    except (UserError, FileNotFoundError, FileExistsError) as exc:
        # Domain errors carry their own "what and how to fix" text; a traceback adds nothing. A plain
        # ValueError is not among them: raised by a library or an internal check, it is a bug (exit 3)
        # until the code that a user can reach raises a UserError with a message for them.
        print(f"error: {rank_prefix()}{exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        if not _user_os_error(exc):
            return _internal(exc)
        print(f"error: {rank_prefix()}{exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # anything not classified as the user's is a bug
        return _internal(exc)


def _internal(exc: BaseException) -> int:
    import traceback

    traceback.print_exception(exc)
    print(
        f"internal error ({type(exc).__name__}): this is a legaltune bug, not a problem with your input; "
        "please report it with the traceback above",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


__all__ = ["build_parser", "main"]
