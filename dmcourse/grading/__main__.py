"""``python -m dmcourse.grading --help``"""

import sys

# jsonschema (under nbformat) imports rfc3987_syntax when installed, which builds a grammar at
# import (~0.9 s a command) for an "iri" format nbformat's schema never uses; without it jsonschema
# goes on (see dmcourse.grading.worker.lean_imports, which does the same in each grading process)
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]

from dmcourse.grading.cli import main  # noqa: E402

sys.exit(main())
