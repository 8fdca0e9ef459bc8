"""torchrun as `lathe train` launches it: a failed worker ends the run with one line, not the launcher's traceback.

`python -m torch.distributed.run` answers a worker that exits with an error by printing its own
traceback (ChildFailedError) under the worker's message, so a refused config ("lathe train:
error: ...") looked like a crash. This runs the same launcher and reports the failure in a line.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(argv))
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        print(f"[lathe] worker process rank {rank} stopped with exit code {failure.exitcode}; its own message "
              f"is above.", file=sys.stderr, flush=True)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
