"""The README's main job runs end to end on the embedded model (short settings) and prints both completions."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_job_prints_plain_and_guided_completions():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "decode", "complete.py"), "--max-new-tokens", "6"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert out.count(">>> ") == 4 and out.count("  base: ") == 4 and out.count("  guided: ") == 4
    assert "KL(guided‖base)" in out and "model forward tokens" in out


def test_main_job_reports_a_bad_model_path_in_one_line():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "decode", "complete.py"), "--model", "/no/such/model"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr
