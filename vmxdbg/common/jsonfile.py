"""Reading a JSON file a person gave, with bounds, as one-line errors."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

from .errors import InputError


def read_json_file(path: Union[str, os.PathLike], what: str, max_bytes: int) -> Any:
    """The parsed JSON of `path` (UTF-8, BOM allowed, at most `max_bytes`); InputError names the
    file (and the line of a syntax error) for a missing, oversized, non-UTF-8, too deeply nested or
    malformed file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > max_bytes:
            raise InputError(f"file is {size} bytes, more than the {max_bytes} a {what} may have", source=str(p))
        text = p.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(exc.strerror or str(exc), source=str(p)) from None
    except UnicodeDecodeError:
        raise InputError("not UTF-8 text", source=str(p)) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError("JSON nested too deeply", source=str(p)) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc.msg}", source=str(p), line=exc.lineno) from None
    except ValueError as exc:  # an integer of more digits than Python converts (3.11+)
        raise InputError(f"not JSON vmxdbg reads: {str(exc).split(':')[0]}", source=str(p)) from None
