"""python -m facesortd"""

import sys

from facesortd.cli import main

sys.exit(main())
