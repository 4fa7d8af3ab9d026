import sys

from harbor_ray.cli import main

sys.exit(main())
