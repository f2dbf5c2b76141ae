__version__ = "0.1.0"

# Set before anything imports torch, whose OpenMP runtime reads it once, when it loads: idle OpenMP threads sleep
# instead of spinning, so that training beside other busy processes is not slowed many times over. A policy the user
# set is kept. (00_core, "Threads that wait")
import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
