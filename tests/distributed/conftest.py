import sys
from pathlib import Path

# torchrun_launch.py, which the tests here import by name.
sys.path.insert(0, str(Path(__file__).parent))
