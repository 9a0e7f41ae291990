"""A stand-in for ``python -m app.worker`` that speaks its line protocol without torch (run as a script).

The request's URL picks the behaviour: ``ws://fake/ok`` joins and serves until told to
drain or stop; ``ws://fake/refuse`` is refused like an impostor pool; ``ws://fake/crash``
dies after connecting. Commands it received are appended to ``<data_dir>/commands``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def emit(event: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    request = json.loads(sys.stdin.readline())
    log = Path(request["data_dir"]) / "commands"
    log.parent.mkdir(parents=True, exist_ok=True)
    emit("machine", cpu_model="Fake CPU", physical_cores=2, logical_cores=4, total_memory_bytes=8 << 30,
         accelerator="cpu", os_label="Testix 1", devices=["cpu"], seconds_per_layer=0.001, threads=2,
         memory_offered_bytes=2 << 30, benchmarks=[])
    if request.get("probe_only"):
        emit("exit", reason="measured")
        return 0
    behaviour = request["url"].rsplit("/", 1)[-1]
    if behaviour == "refuse":
        emit("error", kind="AuthFailed", message="the pool proved another key", hint="do not join it")
        return 3
    emit("status", text="connected")
    emit("joined", pool_id=request["expected_pool_id"])
    if behaviour == "crash":
        time.sleep(0.05)
        os._exit(1)
    commands: list[str] = []

    def read() -> None:
        for line in sys.stdin:
            command = json.loads(line).get("cmd", "")
            commands.append(command)
            with log.open("a") as f:
                f.write(command + "\n")
        commands.append("eof")

    threading.Thread(target=read, daemon=True).start()
    steps = 0
    while True:
        steps += 5
        emit("stats", steps=steps, layers=[[0, 6, 6]])
        if commands:
            if commands[0] == "drain":
                emit("status", text="draining")
                time.sleep(0.05)
                emit("exit", reason="drained")
            else:
                emit("exit", reason="stopped")
            os._exit(0)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
