"""The exit codes of every `legaltune` command (README "Exit codes")."""

# Exit codes (documented in README "Exit codes"):
EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran and its verdict is negative: a plan lint error, a demo loss not lower
EXIT_USAGE = 2  # bad input the user can fix: config, data, model name, flags, run directory, full disk, lock
EXIT_INTERNAL = 3  # an internal failure (a bug): the traceback is printed
EXIT_INTERRUPTED = 130  # Ctrl-C (a train run saves a checkpoint first)
