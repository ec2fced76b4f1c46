"""Flash store: a directory of small files, with every write counted.

The same code runs on littlefs (ESP32), on a host directory (unix port) and
under CPython. ``writes`` counts program operations (one per write call on
an open file, one per rename/remove), the figure that wears flash; the
outbox and the bench report it per hour.

Atomic replace is write-new-then-rename: littlefs and POSIX both make the
rename atomic, so a reader sees the old file or the new one, never a mix.
"""

import os


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class FlashStore:
    def __init__(self, root):
        self.root = root.rstrip("/") or "/"
        self.writes = 0
        self.bytes_written = 0
        self.errors = 0
        self.mkdir("")

    def path(self, name):
        return self.root + "/" + name if name else self.root

    def mkdir(self, name):
        p = self.path(name)
        if not _exists(p):
            os.mkdir(p)

    def exists(self, name):
        return _exists(self.path(name))

    def size(self, name):
        try:
            return os.stat(self.path(name))[6]
        except OSError:
            return -1

    def listdir(self, name):
        try:
            return os.listdir(self.path(name))
        except OSError:
            return []

    def read(self, name, limit=4096):
        """The file's bytes, or None if it does not exist."""
        size = self.size(name)
        if size < 0:
            return None
        try:
            with open(self.path(name), "rb") as f:
                return f.read(min(size, limit))   # no limit-sized buffer on a small heap
        except OSError:
            return None

    def open_read(self, name):
        return open(self.path(name), "rb")

    def write_atomic(self, name, data):
        tmp = self.path(name + ".new")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, self.path(name))
        self.writes += 2
        self.bytes_written += len(data)

    def append(self, name, data):
        """Append ``data`` (bytes or memoryview) in one write call."""
        with open(self.path(name), "ab") as f:
            f.write(data)
        self.writes += 1
        self.bytes_written += len(data)

    def remove(self, name):
        try:
            os.remove(self.path(name))
            self.writes += 1
        except OSError:
            pass
