import sys

from tfrecords_tools.cli import main

sys.exit(main())
