import sys

from bridge.cli import main

# The guard matters: the folder sink's writer process is spawned, and spawning imports the
# main module again (as __mp_main__); without it that process would start a second bridge.
if __name__ == "__main__":
    sys.exit(main())
