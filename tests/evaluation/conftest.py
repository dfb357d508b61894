import sys
from pathlib import Path

# The brute-force Recall@k reference (recall_reference.py) is imported by module name, like tests/references.
sys.path.insert(0, str(Path(__file__).parent))
