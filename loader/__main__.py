import sys

from loader.cli.main import main

sys.exit(main())
