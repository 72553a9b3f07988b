import sys

from geomis.cli.commands import main

sys.exit(main())
