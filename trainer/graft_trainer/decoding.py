"""Decoding image files: one file to uint8 pixels (with the reason a file is unusable, in words), many on a thread
pool, and one error naming every unreadable file of a set."""

from __future__ import annotations

import io
import re

import numpy as np

from graft import storage
from graft_trainer.errors import InputError
from graft_trainer.transforms import Resize, timm_resize


def decode_image(uri: str, size: int, resize: Resize | None = None) -> np.ndarray:
    """Read and decode one image to uint8 `[3, size, size]` (RGB, resized: bilinear to size x size, or a timm
    model's `resize`); InputError names a bad file."""
    from PIL import Image

    data = storage.read_bytes(uri)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img = timm_resize(img, size, resize) if resize else img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()
    except (OSError, ValueError, SyntaxError) as exc:  # UnidentifiedImageError is an OSError
        raise InputError(uri, f"not a readable image ({_image_reason(exc)})") from None


def _image_reason(exc: BaseException) -> str:
    """Why Pillow could not decode a file, in words: the error's type and message without the
    `<_io.BytesIO object at 0x...>` that Pillow puts in it (the file's path is said beside it)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image format Pillow knows, or a corrupt header"
    text = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def try_decode(uri: str, size: int, resize: Resize | None = None) -> tuple[np.ndarray | None, str | None]:
    """`(image, None)` as `decode_image` gives it, or `(None, why not)` for a file that is missing or does not
    decode. Storage errors (endpoint, credentials, bucket) are raised: they are not about the file."""
    try:
        return decode_image(uri, size, resize), None
    except FileNotFoundError:
        return None, "not found"
    except InputError as exc:
        return None, exc.cause


def image_problem(uri: str, size: int = 8) -> str | None:
    """Why one image file cannot be used (not found, not decodable), or None when it decodes."""
    return try_decode(uri, size)[1]


#: How many unreadable files an error message lists by name (the rest are counted).
LISTED_PROBLEMS = 10


def images_error(where: str, problems: list[tuple[str, str]], checked: int, of: int | None = None) -> InputError:
    """One InputError for every unreadable file of a set: a single one names its path; several are listed one a
    line (the first LISTED_PROBLEMS, then how many more) under the set's URI, with the count. `of`: the size of
    the whole set when only a sample of `checked` images was read."""
    if len(problems) == 1:
        return InputError(*problems[0])
    lines = [f"  {uri}: {reason}" for uri, reason in problems[:LISTED_PROBLEMS]]
    if len(problems) > LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - LISTED_PROBLEMS} more")
    sample = f" (a sample of the set's {of})" if of is not None else ""
    return InputError(where, f"{len(problems)} of {checked} images checked{sample} are not readable:\n"
                      + "\n".join(lines))
