"""``python -m dmcourse.grading --help``"""

import sys

from dmcourse.grading.cli import main

sys.exit(main())
