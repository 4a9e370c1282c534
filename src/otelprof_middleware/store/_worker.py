"""A helper process for large merges: ``python -m otelprof_middleware.store._worker``.

It reads ``(directory, rows, limits)`` (pickled) on stdin, decodes and digests those
profile files exactly as the parent would (:func:`..folder.digest_files`, the same
file checks and limits) and writes the digests (pickled) to stdout; the parent
merges and stores them.  Only the parent process that started it talks to it."""

from __future__ import annotations

import pickle
import sys


def main() -> int:
    from .folder import digest_files

    directory, rows, limits = pickle.load(sys.stdin.buffer)
    pickle.dump(digest_files(directory, rows, limits), sys.stdout.buffer, protocol=pickle.HIGHEST_PROTOCOL)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
