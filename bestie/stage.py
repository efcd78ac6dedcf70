"""What every stage entry point shares: validate params first, report expected errors as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from bestie.config import Params, load_params
from bestie.errors import BestieError

__all__ = ["run_stage"]


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
