"""What `ray submit CLUSTER.yaml cluster/entry.py SWEEP.yaml [run options]` runs on the head: the installed
aot_ray.cluster.head entry (see its docstring for the defaults it takes from the head)."""

import sys

sys.path.pop(0)  # `ray submit` runs this copy from ~, where ~/aot_ray is the project folder, not the package
from aot_ray.cluster.head import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
