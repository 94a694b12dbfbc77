"""vLLM servers left running, told apart by where they write their log: a test checks its own servers only, so
a server another test (or another pytest worker) runs at the same moment is not mistaken for a leak."""

from __future__ import annotations

import os
from pathlib import Path

VLLM = "vllm.entrypoints.openai.api_server"


def vllm_servers(logs_under: Path) -> list[str]:
    """Command lines of the live vLLM API server processes whose output goes to a file under `logs_under` (a
    managed server writes its log there: ManagedServer's log path, a job's logs/)."""
    under = os.path.realpath(logs_under)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if VLLM not in command or (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            output = os.path.realpath(os.readlink(proc / "fd" / "1"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if output == under or output.startswith(under + os.sep):
            found.append(f"{proc.name} {command}")
    return found
