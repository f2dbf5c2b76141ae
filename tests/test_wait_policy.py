"""Importing the package shortens how long idle OpenMP threads spin before they sleep (GOMP_SPINCOUNT=10000, set before
torch loads its OpenMP runtime) -- spinning pools made a training beside other busy processes many times slower --
and leaves a wait policy or spin count the user chose alone."""
import os
import subprocess
import sys

CODE = "import os, mrcnn_nb.core; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"


def _spin(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    r = subprocess.run([sys.executable, "-c", CODE], env=base | env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.split()


def test_importing_the_package_sets_a_short_spin():
    assert _spin() == ["10000", "None"]


def test_a_wait_policy_or_spin_count_the_user_set_is_kept():
    assert _spin(OMP_WAIT_POLICY="ACTIVE") == ["None", "ACTIVE"]
    assert _spin(GOMP_SPINCOUNT="5") == ["5", "None"]
