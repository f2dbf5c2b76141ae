"""Importing the package makes OpenMP's idle threads sleep instead of spin (OMP_WAIT_POLICY=PASSIVE) before torch loads
its OpenMP runtime -- spinning pools made a training beside other busy processes many times slower -- and leaves a
policy the user chose alone."""
import os
import subprocess
import sys

CODE = "import os, mrcnn_nb.core; print(os.environ.get('OMP_WAIT_POLICY'))"


def _policy(env):
    r = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_importing_the_package_sets_a_passive_wait_policy():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _policy(env) == "PASSIVE"


def test_a_policy_the_user_set_is_kept():
    assert _policy(dict(os.environ, OMP_WAIT_POLICY="ACTIVE")) == "ACTIVE"
