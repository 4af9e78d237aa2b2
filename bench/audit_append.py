"""Cost of appending to the audit trail (issue 14: the Merkle tree must keep it cheap).

``python -m bench.audit_append [--events N]``: on a fresh SQLite data directory, one
``append_many`` of N events (a burst, one transaction) and N/10 single ``append`` calls
(one transaction each), best of three; prints JSON. Run it on the code before and after
a change to compare (docs/audit-proofs.md has the numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from backline.common import keys
from backline.relay.audit import AuditLog
from backline.relay.db import make_engine, migrate


def measure(events: int) -> dict[str, float]:
    best_many, best_one, cpu_many = float("inf"), float("inf"), float("inf")
    for _ in range(3):
        with tempfile.TemporaryDirectory() as tmp:
            engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
            migrate(engine)
            audit = AuditLog(engine, keys.generate())
            items = [(f"user:u{i % 7}", "bench.event", f"thing:{i}", {"n": i})
                     for i in range(events)]
            start, cpu = time.perf_counter(), time.process_time()
            audit.append_many(items)
            best_many = min(best_many, time.perf_counter() - start)
            # CPU time too: on a shared machine the wall clock measures the neighbours.
            cpu_many = min(cpu_many, time.process_time() - cpu)
            singles = max(1, events // 10)
            start = time.perf_counter()
            for i in range(singles):
                audit.append("user:bench", "bench.one", f"thing:{i}", {"n": i})
            best_one = min(best_one, (time.perf_counter() - start) / singles)
            engine.dispose()
    return {"events": events, "append_many_s": round(best_many, 3),
            "append_many_us_per_event": round(best_many / events * 1e6, 1),
            "append_many_cpu_s": round(cpu_many, 3),
            "append_single_ms": round(best_one * 1e3, 3),
            "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10000)
    print(json.dumps(measure(parser.parse_args().events)))


if __name__ == "__main__":
    main()
