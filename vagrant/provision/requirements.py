"""Print the requirements a VM needs from pyproject.toml, one a line (provision/image.sh, e2e-venv.sh).

`image`: the project's dependencies and build requirements (what deploy/Dockerfile's pip needs,
offline: it installs the dependencies, then builds the project); `e2e`: what runs tests/e2e
with the kube driver (pytest and pytest-timeout from the dev extras, PyYAML).
"""

import re
import sys
import tomllib

pyproject = tomllib.load(open(sys.argv[2] if len(sys.argv) > 2 else "/ambit/pyproject.toml", "rb"))
project = pyproject["project"]


def name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower()


what = sys.argv[1] if len(sys.argv) > 1 else ""
if what == "image":
    wanted = project["dependencies"] + pyproject["build-system"]["requires"]
elif what == "e2e":
    wanted = [r for r in project["optional-dependencies"]["dev"] if name(r) in ("pytest", "pytest-timeout")]
    wanted += [r for r in project["dependencies"] if name(r) == "pyyaml"]
else:
    sys.exit("usage: requirements.py image|e2e [PYPROJECT]")
print("\n".join(wanted))
