"""Time frame encoding and decoding of one decode step's hidden state ([1, 576] fp32).

Prints microseconds per call for the raw frame layer and for a whole Forward message.
Usage (from the repository root): python -m scripts.bench_frames [--repeat N]
"""

from __future__ import annotations

import argparse
import timeit

import torch

from core.protocol.frames import decode_frame, encode_frame
from core.protocol.messages import Forward, decode_message


def micros(fn: object, repeat: int) -> float:
    """Best-of-5 mean time of ``fn`` in microseconds."""
    runs = timeit.repeat(fn, number=repeat, repeat=5)  # type: ignore[arg-type]
    return min(runs) / repeat * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20_000, help="calls per timing run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = torch.randn(1, 576)
    header = {"step_id": 1, "session_id": "s1", "assignment_id": "a1", "start_pos": 17}
    frame = encode_frame("forward", header, {"x": x})
    msg = Forward(step_id=1, session_id="s1", assignment_id="a1", start_pos=17, x=x)
    data = msg.to_frame()
    print(f"frame of {len(frame)} bytes ([1, 576] float32)")
    print(f"encode_frame     {micros(lambda: encode_frame('forward', header, {'x': x}), args.repeat):7.1f} us")
    print(f"decode_frame     {micros(lambda: decode_frame(frame), args.repeat):7.1f} us")
    print(f"Forward.to_frame {micros(msg.to_frame, args.repeat):7.1f} us")
    print(f"decode_message   {micros(lambda: decode_message(data), args.repeat):7.1f} us")


if __name__ == "__main__":
    main()
