"""Renders the demo's HTML report in headless Chromium and keeps a screenshot for the README.

apt-get install chromium        # Debian's package; nothing is downloaded at run time
python tools/screenshot_report.py  # writes docs/report.html and docs/report.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Flags for a closed network: no background requests, no first-run or sync traffic.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def main() -> int:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("screenshot_report: chromium is not installed; apt-get install chromium",
              file=sys.stderr)
        return 3
    report = ROOT / "docs" / "report.html"
    with tempfile.TemporaryDirectory() as scratch:
        repro = ROOT / "trtcheck-repro" / "demo-onnxrt-fp16"
        subprocess.run([sys.executable, "-m", "trtcheck", "bisect", "zoo/demo.onnx", "--report",
                        str(report), "--repro", str(repro.relative_to(ROOT))], cwd=ROOT,
                       capture_output=True, check=False, timeout=600)
        shutil.rmtree(repro, ignore_errors=True)
        if not report.is_file():
            print("screenshot_report: trtcheck wrote no report", file=sys.stderr)
            return 1
        completed = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={scratch}/profile",
             "--window-size=1280,1900", f"--screenshot={ROOT / 'docs' / 'report.png'}",
             report.as_uri()], capture_output=True, text=True, timeout=120)
    if completed.returncode != 0:
        print(completed.stderr, file=sys.stderr)
        return 1
    print(f"wrote {ROOT / 'docs' / 'report.png'} from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
