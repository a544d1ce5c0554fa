"""`python -m imgsearch COMMAND ...`: see imgsearch/cli.py or `python -m imgsearch --help`."""
import sys

from .cli import main

sys.exit(main())
