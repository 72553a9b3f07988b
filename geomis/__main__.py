from geomis.cli import main
import sys
sys.exit(main())
