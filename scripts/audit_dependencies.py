"""Audit the installed dependencies with pip-audit (PyPI's vulnerability data).

Exit 0: every dependency audited, no known vulnerability (beyond the documented exceptions in
security/pip-audit-ignore.txt). Exit 1: a known vulnerability. Exit 3: the audit could not run
because PyPI's JSON API is unreachable (this sandbox reaches only the package index); CI reports
that loudly instead of claiming a clean result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sentiment.paths import REPO_ROOT

IGNORE_FILE = REPO_ROOT / "security" / "pip-audit-ignore.txt"


def ignored_ids() -> list[str]:
    ids = []
    for line in IGNORE_FILE.read_text().splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            ids.append(entry.split()[0])
    return ids


def main() -> int:
    command = [str(Path(sys.executable).parent / "pip-audit"), "--progress-spinner", "off", "--format", "json",
               "--skip-editable"]
    for vuln_id in ignored_ids():
        command += ["--ignore-vuln", vuln_id]
    result = subprocess.run(command, capture_output=True, text=True)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(result.stdout[-2000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
        return 3
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    for dependency in vulnerable:
        for vuln in dependency["vulns"]:
            print(f"VULNERABLE {dependency['name']} {dependency['version']}: {vuln['id']} "
                  f"(fixed in {', '.join(vuln.get('fix_versions') or ['-'])})")
    if vulnerable:
        return 1
    if not audited:
        print(f"pip-audit could not audit any of {len(dependencies)} dependencies: PyPI's vulnerability data is "
              "unreachable from here (only the package index is). Not a clean result: run `make audit` where "
              "pypi.org/pypi/<name>/json is reachable.")
        return 3
    print(f"pip-audit: {len(audited)} dependencies audited, no known vulnerability "
          f"({len(dependencies) - len(audited)} not on PyPI, {len(ignored_ids())} documented exceptions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
