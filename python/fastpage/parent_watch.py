"""Child processes (parallel workers, API servers) end themselves when the process that started them
is gone, however it went (a SIGKILL runs no cleanup there)."""

from __future__ import annotations

import os
import threading
import time


def exit_when_orphaned(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="fastpage-parent-watch", daemon=True).start()
