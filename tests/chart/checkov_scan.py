"""Run checkov offline and list what failed."""

from __future__ import annotations

import json
import subprocess
import sys


def checkov_failures(target: list[str], framework: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "checkov.main", *target, "--framework", framework, "--quiet", "--compact",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True,
    )
    reports = json.loads(result.stdout) if result.stdout.strip() else []
    reports = reports if isinstance(reports, list) else [reports]
    assert reports or result.returncode == 0, result.stderr[-2000:]
    return [
        f"{check['check_id']} {check['check_name']} ({check['resource']})"
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
