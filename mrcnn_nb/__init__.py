__version__ = "0.1.0"

# Set before anything imports torch, whose OpenMP runtime (GNU libgomp) reads it once, when it loads: idle OpenMP
# threads spin 10,000 rounds before they sleep (libgomp's default is 300,000), so that training beside other busy
# processes is not slowed many times over while a lone process keeps its speed. A wait policy or spin count the user
# set is kept. (00_core, "Threads that wait")
import os as _os

if "OMP_WAIT_POLICY" not in _os.environ: _os.environ.setdefault("GOMP_SPINCOUNT", "10000")
