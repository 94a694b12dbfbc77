"""A sample store as the pipeline wrote it before samples were keyed by problem: one journal per output and
fingerprint, .samples/{output stem}.{digest}.jsonl, whose fingerprint held a digest of the output's rows and whose
records held their row's index. Finished runs hold such stores; the tests read them as the upgrade must."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def write_legacy_journal(output: Path, fingerprint: dict, rows: list[dict], samples: list[dict]) -> Path:
    """The journal of `output` under `fingerprint` (without its rows) for `rows`, holding `samples` (each the
    sample's fields, with `row_index` naming its row, whose fields it gets), byte for byte as the earlier store
    wrote it. Returns its path."""
    full = fingerprint | {"rows": hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()}
    full = json.loads(json.dumps(full, sort_keys=True))
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]
    path = output.parent / ".samples" / f"{output.stem}.{digest}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"journal": 1, "fingerprint": full}) + "\n")
        for sample in samples:
            f.write(json.dumps(rows[sample["row_index"]] | sample) + "\n")
    return path
