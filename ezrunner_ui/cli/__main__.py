import sys

from ezrunner_ui.cli import main

sys.exit(main())
