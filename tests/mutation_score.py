"""Score of the last mutation run (``make mutants``): killed / all mutants, and the survivors.

Reads mutmut's ``mutants/mutmut-cicd-stats.json`` (after ``mutmut export-cicd-stats``) and
``mutmut results``; exits 1 when the score is under the goal (default 85%), so CI can gate on it.
Mutants no test reaches count as survivors: a line no test runs is not a tested line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--goal", type=float, default=85.0, help="minimum score in percent")
    parser.add_argument("--mutmut", default="mutmut", help="the mutmut executable")
    args = parser.parse_args(argv)
    stats = json.loads(Path("mutants/mutmut-cicd-stats.json").read_text())
    killed = stats["killed"] + stats["timeout"] + stats["segfault"]
    counted = stats["total"] - stats["skipped"]
    score = 100.0 * killed / counted if counted else 0.0
    results = subprocess.run([args.mutmut, "results", "--all", "true"], capture_output=True, text=True)
    left = [line.strip() for line in results.stdout.splitlines()
            if line.strip().endswith(("survived", "no tests", "suspicious"))]
    per_module = Counter(line.split(".x")[0] for line in left)
    for module, n in sorted(per_module.items()):
        print(f"  {module}: {n} not killed")
    print(f"mutation score: {killed}/{counted} killed = {score:.1f}% "
          f"(survived {stats['survived']}, no tests {stats['no_tests']}, "
          f"suspicious {stats['suspicious']}; goal {args.goal:.0f}%)")
    return 0 if score >= args.goal else 1


if __name__ == "__main__":
    sys.exit(main())
