"""Scan the raw layout: pair every image with its per-class masks, refusing unusable files.

Raw layout::

    RAW/images/[<sub/folders>/]<stem>.<photo extension>   (IMAGE_EXTENSIONS: the demo's photos)
    RAW/masks/[<sub/folders>/]<stem><suffix>.<jpg|jpeg|png>   one mask per class present

Sub-folders are searched (linked folders followed once); a mask pairs with the image of the same
sub-folder and stem, so ``images/site1/a.jpg`` and ``images/site2/a.jpg`` are two images (their
output names are ``site1__a`` and ``site2__a``: the sub-folders joined with ``__``). Extensions
and class suffixes match in any case (``IMG_01.JPG``, ``IMG_01Crack.png``); a mask whose stem
differs from its image's only in case pairs with it when that image is the only such one. A
mask pairs by stem whatever the two extensions (``IMG_7.HEIC`` with ``IMG_7crack.png``).
Hidden files and folders (``.name``) are ignored. A dangling symlink, a symlink loop, a file that
cannot be opened or a file with another extension is an error naming the file: nothing is
silently dropped.
"""

import errno
import hashlib
import os

from .settings import DEFAULT_CLASS_SUFFIXES, IMAGE_EXTENSIONS, MASK_EXTENSIONS, RawDatasetError

__all__ = ["scan_raw_dir", "content_groups", "read_bytes", "output_stem"]


def read_bytes(path):
    """The bytes of ``path``; an OS error becomes a :class:`RawDatasetError` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise RawDatasetError(f"{path}: cannot read ({e.strerror or e})") from e


def _check_entry(path):
    """'file', 'skip' (a folder) or a RawDatasetError for links that lead nowhere."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RawDatasetError(
                f"{path}: symlink loop", "replace the link by the file it should point to"
            ) from e
        if os.path.islink(path):
            raise RawDatasetError(
                f"{path}: dangling symlink (points to {os.readlink(path)}, which does not exist)",
                "fix or remove the link",
            ) from e
        raise RawDatasetError(f"{path}: cannot access ({e.strerror or e})") from e
    if os.path.isdir(path):
        return "skip"
    if not os.path.isfile(path):
        raise RawDatasetError(f"{path}: not a regular file (st_mode {oct(st.st_mode)})")
    if not os.access(path, os.R_OK):
        raise RawDatasetError(f"{path}: not readable (permission denied)", "check its permissions")
    return "file"


def _list_files(folder, extensions, _rel="", _seen=None):
    """(relative base name with "/" separators, path) of every file under ``folder``, sorted,
    sub-folders included (each real folder once)."""
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.lexists(folder) else "folder not found"
        raise RawDatasetError(
            f"{folder}: {what}", "the raw layout is RAW/images/<stem>.jpg and RAW/masks/"
        )
    seen = {os.path.realpath(folder)} if _seen is None else _seen
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise RawDatasetError(f"{folder}: cannot list the folder ({e.strerror or e})") from e
    out = []
    for name in names:
        path = os.path.join(folder, name)
        if name.startswith("."):
            continue
        if _check_entry(path) == "skip":  # a folder: searched once, whatever links lead to it
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                out += _list_files(path, extensions, f"{_rel}{name}/", seen)
            continue
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, held by Python as surrogates
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise RawDatasetError(
                f"{shown}: the file name is not valid UTF-8",
                "rename it: the dataset's json files name every image and mask",
            ) from None
        base, ext = os.path.splitext(name)
        if ext.lower() not in extensions:
            raise RawDatasetError(
                f"{path}: unexpected file type {ext!r} (expected one of {', '.join(extensions)})"
            )
        out.append((_rel + base, path))
    return out


def output_stem(rel):
    """Output name of the image ``images/<rel>.<ext>``: sub-folders joined with ``__``."""
    return rel.replace("/", "__")


def scan_raw_dir(raw_dir, class_suffixes=None):
    """Pair every image of ``RAW/images`` with its masks in ``RAW/masks``.

    Args:
        class_suffixes: dict mask-name suffix -> class name (default: crack, spall, rebar).
    Returns:
        list of (stem, image_path, {class_name: mask_path}) sorted by stem.
    Raises:
        RawDatasetError: two images with one stem, a mask with an unknown suffix or without an
            image, two masks of one class for one image, a dangling or looping symlink, an
            unreadable file; the message names the files.
    """
    raw_dir = os.fspath(raw_dir)
    if not os.path.isdir(raw_dir):
        what = "is not a folder" if os.path.lexists(raw_dir) else "folder not found"
        raise RawDatasetError(
            f"{raw_dir}: {what}", "--raw must be a folder holding images/ and masks/"
        )
    suffixes = dict(DEFAULT_CLASS_SUFFIXES if class_suffixes is None else class_suffixes)
    images, named = {}, {}  # relative stem -> path; output stem -> relative stem
    for rel, path in _list_files(os.path.join(raw_dir, "images"), IMAGE_EXTENSIONS):
        if rel in images:
            raise RawDatasetError(
                f"{path}: two images share the stem {rel!r} (also {images[rel]}); "
                "keep one of them"
            )
        stem = output_stem(rel)
        if stem in named:
            raise RawDatasetError(
                f"{path}: its output name {stem!r} is also that of {images[named[stem]]}",
                "rename one of them (sub-folders are joined with '__' in output names)",
            )
        images[rel], named[stem] = path, rel
    by_lower = {}
    for rel in images:
        by_lower.setdefault(rel.lower(), []).append(rel)
    masks = {rel: {} for rel in images}
    by_length = sorted(suffixes, key=lambda s: (-len(s), s))
    for base, path in _list_files(os.path.join(raw_dir, "masks"), MASK_EXTENSIONS):
        name = base.rsplit("/", 1)[-1]
        suffix = next((s for s in by_length if name.endswith(s) and len(name) > len(s)), None)
        if suffix is None:  # the exact suffix first, then in any case
            suffix = next(
                (s for s in by_length if name.lower().endswith(s.lower()) and len(name) > len(s)),
                None,
            )
        if suffix is None:
            raise RawDatasetError(
                f"{path}: unknown class suffix (mask names are <image stem><suffix>, "
                f"suffixes: {', '.join(sorted(suffixes))})"
            )
        rel, cls = base[: -len(suffix)], suffixes[suffix]
        if rel not in images:
            same = by_lower.get(rel.lower(), [])
            if len(same) != 1:
                raise RawDatasetError(
                    f"{path}: mask without image (no images/{rel}.<photo extension>"
                    + (f"; {len(same)} images differ from it only in case" if same else "")
                    + ")",
                    "a mask is named <image stem><class suffix> in the sub-folder of its image",
                )
            rel = same[0]
        if cls in masks[rel]:
            raise RawDatasetError(
                f"{path}: second {cls!r} mask for image {rel!r} (also {masks[rel][cls]})"
            )
        masks[rel][cls] = path
    return [(output_stem(rel), images[rel], masks[rel]) for rel in sorted(images)]


def content_groups(entries):
    """stem -> stem of the first image with the same bytes (duplicates must share a split)."""
    first, groups = {}, {}
    for stem, path, _ in entries:
        digest = hashlib.sha1(read_bytes(path)).hexdigest()
        groups[stem] = first.setdefault(digest, stem)
    return groups
