"""Ranks other than 0 keep the libraries' progress bars and warnings to themselves: N copies of each
would bury rank 0's. Their errors still reach the terminal (a failing rank prints its own)."""

from __future__ import annotations

import warnings


def quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


__all__ = ["quiet_libraries"]
