"""Write a folder or a file so that readers see the old one or the new one, never a torn one.

Every writer in tfbrain (preset folders, training state, SavedModel versions, reports,
attribution maps) goes through these two helpers: content is written into a temporary
sibling with a unique name, then renamed into place. Replacing an existing folder moves it
aside first (`<name>.old`) and removes it after the swap, so a kill between the two renames
leaves `<name>.old` complete; `recover_folder` puts it back.
"""

import contextlib
import os
import pathlib
import shutil
import tempfile


@contextlib.contextmanager
def atomic_folder(target, replace: bool = True):
    """`with atomic_folder(path) as tmp:` write into `tmp`; on success it becomes `path`.

    Args:
        target: the folder to create or replace.
        replace: replace an existing `target` (else FileExistsError before anything is
            written).
    """
    target = pathlib.Path(target)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    # a hidden, non-integer name: TF-Serving and readers ignore it until the rename
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(target.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_folder(target) -> pathlib.Path:
    """`target`, or its complete `.old` copy when a kill fell between the two renames."""
    target = pathlib.Path(target)
    old = target.with_name(target.name + ".old")
    if not target.exists() and old.exists():
        os.replace(old, target)
    return target


def atomic_write_text(path, text: str) -> pathlib.Path:
    """Write a text file through a unique temporary sibling and a rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
