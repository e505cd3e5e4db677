import sys

from localsage.cli import main

sys.exit(main())
