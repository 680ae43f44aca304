"""Files the agent writes (fstab, units, corosync.conf, libvirtd's settings, keys): whole or
not at all."""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """``path`` holds ``data`` whole, or is left as it was. A new file beside it, created with
    ``mode`` before any byte is written (a key is never readable by others, not even for a
    moment), is renamed over it."""
    tmp = path.with_name(path.name + ".haven-tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # exactly ``mode``, whatever the umask
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
