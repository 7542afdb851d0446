import sys

from rdmapin.cli import main

sys.exit(main())
