"""Precompute the features of the original images shipped with the app, like matsui528/sis's offline.py.

    python generate_original_features.py [--shard i/n] [--batch-size N] [--merge] [--init]

It is `python -m imgsearch originals` (see its --help): the images named in original_filenames.txt are
read from images/ and their features written where the app loads them, for the engine the app would use.
"""
import sys

from imgsearch.cli import main

if __name__ == "__main__":
    sys.exit(main(["originals", *sys.argv[1:]]))
