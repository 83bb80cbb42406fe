"""The README's main job, in a short mode: python -m pydl.demo trains the torch and the
pydl-converted LeNet-5 side by side and they agree."""
import os
import subprocess
import sys


def test_demo_short(tmp_path):
    png = tmp_path / "curves.png"
    r = subprocess.run([sys.executable, "-m", "pydl.demo", "--epochs", "2", "--plot", str(png)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "the two runs agree" in r.stdout
    assert "layer(s) converted" in r.stdout
    assert os.path.getsize(png) > 5000
