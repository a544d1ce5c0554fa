"""Precompute the features of the original images shipped with the app, like matsui528/sis's offline.py.

    python generate_original_features.py [--shard i/n] [--batch-size N] [--init]

It is `python -m imgsearch originals` (see its --help): the images named in original_filenames.txt are
read from images/ and their features written into the app's catalogue, for the engine the app would use.
"""
import sys

from imgsearch.cli import main

if __name__ == "__main__":
    sys.exit(main(["originals", *sys.argv[1:]]))
