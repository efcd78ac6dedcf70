"""What every stage entry point shares: its path flags; validate params first, report expected
errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bestie.config import Params, load_params
from bestie.errors import BestieError

if TYPE_CHECKING:  # the stage scripts make the parser: parsing stays at the edge
    import argparse

__all__ = ["add_arguments", "run_stage"]

DEVICE_HELP = "auto | cpu | cuda | cuda:N"
_HELP = {
    "device": DEVICE_HELP,
    # not a DVC output, so an interrupted run keeps its state there
    "state_dir": "resumable training state, kept until the run finishes",
}


def add_arguments(parser: argparse.ArgumentParser, **defaults: str) -> None:
    """Add a flag ``--NAME`` (``_`` spelled ``-``) with its default for each keyword.

    The defaults are the paths ``dvc.yaml`` passes, so a stage run by hand without flags
    reads and writes where the pipeline does; ``device`` and ``state_dir`` get a help text.
    """
    for name, default in defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=default, help=_HELP.get(name))


def run_stage(main: Callable[[Params], None], params_path: str | Path = "params.yaml") -> None:
    """Load and validate the whole params file, then run ``main(params)``.

    A :class:`BestieError` (bad params, bad dataset, missing input) is printed as one line
    ``error: ...`` on stderr with exit status 1; any other exception is a bug and keeps
    its traceback.
    """
    try:
        params = load_params(params_path)
        main(params)
    except BestieError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
