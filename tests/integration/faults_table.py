#!/usr/bin/python3
"""Run the fault matrix of test_faults.py and print its table (Markdown):
fault kind -> path (pull / mount) -> what the reader saw -> bytes refetched -> requests.

    BLOBFS=/path/to/blobfs /usr/bin/python3 tests/integration/faults_table.py [-k EXPR]

Extra arguments go to pytest (the default selects test_fault only).  The table
is printed whether or not cases fail; failing cases are listed by pytest above it.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    args = sys.argv[1:] or ["-k", "test_fault"]
    with tempfile.TemporaryDirectory(prefix="blobfs-faults-table-") as tmp:
        table = Path(tmp) / "table.md"
        env = {**os.environ, "BLOBFS_FAULTS_TABLE": str(table), "PYTHONDONTWRITEBYTECODE": "1"}
        status = subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                                  "--tb=line", str(HERE / "test_faults.py"), *args], env=env)
        if table.exists():
            print(table.read_text())
        else:
            print("(no table: no fault case ran)", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
