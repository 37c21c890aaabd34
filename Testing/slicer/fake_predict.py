"""A stand-in for ``python -m AutoSegLib predict`` used by the module tests (not a test file).

Reads ``<input>/case_0000.*``, writes ``<output>/case<ending>`` = 1 where the image > 50, 2 where > 150,
on the input's grid (AutoSegLib.io.images, so geometry is kept), emitting progress events like the CLI.
Modes (first argument): ``ok``, ``sleep`` (emits a stage event, then sleeps 120 s), ``fail`` (error
event + traceback on stderr, exit 2), ``nooutput`` (exits 0 without writing).
"""
import json
import sys
import time
from pathlib import Path


def ev(**k):
    print(json.dumps(k), flush=True)


def main(argv):
    mode, args = argv[0], argv[1:]
    opts = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("-")}
    ev(event="stage", stage="predict", message=f"fake predict ({mode})")
    print("argv " + json.dumps(args), flush=True)
    if mode == "sleep":
        time.sleep(120)
    if mode == "fail":
        ev(event="log", level="info", message="loading fold 0")
        print("Traceback (most recent call last):\n  RuntimeError: CUDA out of memory", file=sys.stderr, flush=True)
        ev(event="error", message="fold 0: checkpoint_final.pt is damaged")
        return 2
    inp, out = Path(opts["-i"]), Path(opts["-o"])
    src = sorted(inp.glob("case_0000*"))[0]
    ending = src.name[len("case_0000"):]
    if mode == "nooutput":
        return 0
    from AutoSegLib.io.images import read_image, write_image
    import numpy as np

    image, geometry = read_image(src)
    for i in range(1, 4):
        ev(event="progress", stage="predict", current=i, total=3, eta_s=float(3 - i), message=f"patch {i}")
    label = (image > 50).astype(np.uint8) + (image > 150).astype(np.uint8)
    write_image(label, geometry, out / f"case{ending}")
    ev(event="result", output=str(out / f"case{ending}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
