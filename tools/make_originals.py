"""Regenerate the app's 50 original images from photographs bundled inside installed Python packages.

Writes `images/*.jpg`, `images/CREDITS.md` and `original_filenames.txt` under the project folder (or `--data-dir`).
Every file comes from a public-domain, CC0 or CC BY photograph shipped in scikit-image, scikit-learn or
matplotlib, so nothing is downloaded. Views that are not the whole photograph are crops, mirror images or quarter
turns; the credits describe each one, generated from the same table that produces the pixels.

    .venv/bin/python tools/make_originals.py
"""
from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

PROJECT_DIR = Path(__file__).resolve().parent.parent
MAX_SIDE = 1024
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Source:
    """One photograph as shipped in a package, with what its package says about its rights."""

    origin: str
    licence: str
    load: Callable[[], np.ndarray]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


def _matplotlib(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(filename, asfileobj=False)) as image:
            return np.asarray(image.convert("RGB"))

    return load


SOURCES = {
    "chelsea": Source(
        "scikit-image `skimage.data.chelsea()` (`chelsea.png`)",
        "CC0, photographer Stefan van der Walt", _skimage("chelsea")),
    "coffee": Source(
        "scikit-image `skimage.data.coffee()` (`coffee.png`)",
        "CC0, photographer Rachel Michetti (courtesy of Pikolo Espresso Bar)", _skimage("coffee")),
    "rocket": Source(
        "scikit-image `skimage.data.rocket()` (`rocket.jpg`)",
        "Public domain, released by SpaceX (DSCOVR launch on Falcon 9)", _skimage("rocket")),
    "astronaut": Source(
        "scikit-image `skimage.data.astronaut()` (`astronaut.png`)",
        "Public domain, NASA (portrait of astronaut Eileen Collins)", _skimage("astronaut")),
    "camera": Source(
        "scikit-image `skimage.data.camera()` (`camera.png`, greyscale)",
        "CC0, photographer Lav Varshney", _skimage("camera")),
    "grace_hopper": Source(
        "matplotlib `cbook.get_sample_data('grace_hopper.jpg')`",
        "Public domain: official U.S. Navy portrait of Commodore Grace M. Hopper (U.S. federal government work); "
        "matplotlib ships no per-file notice, see the licence notes below", _matplotlib("grace_hopper.jpg")),
    "hubble": Source(
        "scikit-image `skimage.data.hubble_deep_field()` (`hubble_deep_field.jpg`)",
        "Public domain, NASA (Hubble eXtreme Deep Field)", _skimage("hubble_deep_field")),
    "retina": Source(
        "scikit-image `skimage.data.retina()` (`retina.jpg`)",
        "CC0 1.0, Mikael Häggström via Wikimedia Commons", _skimage("retina")),
    "flower": Source(
        "scikit-learn `load_sample_image('flower.jpg')`",
        "CC BY 2.0, Flickr user vultilion (scikit-learn's README links to vultilion's photo but names "
        "danielbuechele); retrieved by Robert Layton", _sklearn("flower.jpg")),
    "china": Source(
        "scikit-learn `load_sample_image('china.jpg')`",
        "CC BY 2.0, Flickr user danielbuechele; retrieved by Robert Layton", _sklearn("china.jpg")),
    "ihc": Source(
        "scikit-image `skimage.data.immunohistochemistry()` (`ihc.png`)",
        "No known copyright restrictions (Center for Microscopy And Molecular Imaging)",
        _skimage("immunohistochemistry")),
    "coins": Source(
        "scikit-image `skimage.data.coins()` (`coins.png`, greyscale)",
        "No known copyright restrictions (Brooklyn Museum collection)", _skimage("coins")),
    "brick": Source(
        "scikit-image `skimage.data.brick()` (`brick.png`, greyscale)",
        "CC0 (CC0Textures `Bricks25`)", _skimage("brick")),
    "gravel": Source(
        "scikit-image `skimage.data.gravel()` (`gravel.png`, greyscale)",
        "CC0 (CC0Textures `Gravel04`)", _skimage("gravel")),
    "grass": Source(
        "scikit-image `skimage.data.grass()` (`grass.png`, greyscale)",
        "CC0 (DeviantArt user linolafett, `Grass-01`)", _skimage("grass")),
}


@dataclass(frozen=True)
class Crop:
    left: int
    top: int
    right: int
    bottom: int

    def apply(self, image: Image.Image) -> Image.Image:
        return image.crop((self.left, self.top, self.right, self.bottom))

    def describe(self) -> str:
        return f"crop x {self.left}–{self.right}, y {self.top}–{self.bottom}"


@dataclass(frozen=True)
class Mirror:
    def apply(self, image: Image.Image) -> Image.Image:
        return ImageOps.mirror(image)

    def describe(self) -> str:
        return "mirrored left–right"


@dataclass(frozen=True)
class QuarterTurn:
    def apply(self, image: Image.Image) -> Image.Image:
        return image.transpose(Image.Transpose.ROTATE_90)

    def describe(self) -> str:
        return "rotated 90° anticlockwise"


@dataclass(frozen=True)
class Original:
    filename: str
    subject: str
    source: str
    steps: tuple = ()


ORIGINALS = (
    Original("cat_chelsea.jpg", "cat", "chelsea"),
    Original("cat_chelsea_mirror.jpg", "cat", "chelsea", (Mirror(),)),
    Original("cat_chelsea_face_crop.jpg", "cat", "chelsea", (Crop(90, 0, 390, 300),)),
    Original("cat_chelsea_eyes_crop.jpg", "cat", "chelsea", (Crop(100, 40, 380, 200),)),
    Original("coffee_cup.jpg", "coffee cup", "coffee"),
    Original("coffee_cup_mirror.jpg", "coffee cup", "coffee", (Mirror(),)),
    Original("coffee_cup_closeup_crop.jpg", "coffee cup", "coffee", (Crop(150, 0, 450, 300),)),
    Original("coffee_cup_saucer_spoon_crop.jpg", "coffee cup", "coffee", (Crop(250, 100, 550, 400),)),
    Original("rocket_launch.jpg", "rocket", "rocket"),
    Original("rocket_launch_mirror.jpg", "rocket", "rocket", (Mirror(),)),
    Original("rocket_launch_centre_crop.jpg", "rocket", "rocket", (Crop(170, 60, 470, 427),)),
    Original("rocket_launch_tower_crop.jpg", "rocket", "rocket", (Crop(240, 0, 640, 427),)),
    Original("rocket_space_shuttle_model_crop.jpg", "rocket", "astronaut", (Crop(340, 0, 490, 290),)),
    Original("portrait_astronaut_collins.jpg", "portrait", "astronaut"),
    Original("portrait_astronaut_collins_mirror.jpg", "portrait", "astronaut", (Mirror(),)),
    Original("portrait_astronaut_collins_face_crop.jpg", "portrait", "astronaut", (Crop(90, 0, 370, 280),)),
    Original("portrait_grace_hopper.jpg", "portrait", "grace_hopper"),
    Original("portrait_grace_hopper_mirror.jpg", "portrait", "grace_hopper", (Mirror(),)),
    Original("portrait_grace_hopper_face_crop.jpg", "portrait", "grace_hopper", (Crop(110, 20, 410, 340),)),
    Original("portrait_photographer_with_camera.jpg", "portrait", "camera"),
    Original("galaxies_hubble_deep_field.jpg", "galaxies", "hubble"),
    Original("galaxies_hubble_top_left_crop.jpg", "galaxies", "hubble", (Crop(0, 0, 500, 436),)),
    Original("galaxies_hubble_top_right_crop.jpg", "galaxies", "hubble", (Crop(500, 0, 1000, 436),)),
    Original("galaxies_hubble_bottom_left_crop.jpg", "galaxies", "hubble", (Crop(0, 436, 500, 872),)),
    Original("galaxies_hubble_bottom_right_crop.jpg", "galaxies", "hubble", (Crop(500, 436, 1000, 872),)),
    Original("retina_fundus.jpg", "retina", "retina"),
    Original("retina_fundus_mirror.jpg", "retina", "retina", (Mirror(),)),
    Original("retina_optic_disc_crop.jpg", "retina", "retina", (Crop(0, 350, 650, 1000),)),
    Original("retina_macula_crop.jpg", "retina", "retina", (Crop(450, 400, 1050, 1000),)),
    Original("flower_dahlia.jpg", "flower", "flower"),
    Original("flower_dahlia_mirror.jpg", "flower", "flower", (Mirror(),)),
    Original("flower_dahlia_crop.jpg", "flower", "flower", (Crop(150, 70, 470, 390),)),
    Original("flower_dahlia_petals_crop.jpg", "flower", "flower", (Crop(200, 120, 400, 320),)),
    Original("pagoda_china.jpg", "pagoda", "china"),
    Original("pagoda_china_mirror.jpg", "pagoda", "china", (Mirror(),)),
    Original("pagoda_china_tower_crop.jpg", "pagoda", "china", (Crop(40, 0, 370, 427),)),
    Original("pagoda_china_roof_crop.jpg", "pagoda", "china", (Crop(60, 20, 360, 220),)),
    Original("tissue_micrograph_ihc.jpg", "tissue micrograph", "ihc"),
    Original("tissue_micrograph_ihc_top_left_crop.jpg", "tissue micrograph", "ihc", (Crop(0, 0, 320, 320),)),
    Original("tissue_micrograph_ihc_top_right_crop.jpg", "tissue micrograph", "ihc", (Crop(192, 0, 512, 320),)),
    Original("tissue_micrograph_ihc_bottom_crop.jpg", "tissue micrograph", "ihc", (Crop(96, 192, 416, 512),)),
    Original("coins_pompeii.jpg", "coins", "coins"),
    Original("coins_pompeii_left_crop.jpg", "coins", "coins", (Crop(0, 0, 200, 303),)),
    Original("coins_pompeii_right_crop.jpg", "coins", "coins", (Crop(184, 0, 384, 303),)),
    Original("texture_brick_wall.jpg", "brick wall", "brick"),
    Original("texture_brick_wall_rotated.jpg", "brick wall", "brick", (QuarterTurn(),)),
    Original("texture_gravel.jpg", "gravel", "gravel"),
    Original("texture_gravel_crop.jpg", "gravel", "gravel", (Crop(128, 128, 384, 384),)),
    Original("texture_grass.jpg", "grass", "grass"),
    Original("texture_grass_crop.jpg", "grass", "grass", (Crop(256, 0, 512, 256),)),
)


def render(original: Original, photo: Image.Image) -> tuple[bytes, str]:
    """The JPEG bytes for one original and a description of how it was derived from the photograph."""
    image = photo
    notes = [step.describe() for step in original.steps]
    for step in original.steps:
        image = step.apply(image)
    if max(image.size) > MAX_SIDE:
        before = "×".join(map(str, image.size))
        image = image.copy()  # thumbnail() works in place and the photograph is shared by several originals
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        notes.append(f"downscaled from {before} to {image.width}×{image.height}")
    if image.mode == "L":
        image = image.convert("RGB")
        notes.append("grey copied to all three RGB channels")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue(), "; ".join(notes) or "none (whole photograph)"


def load_photo(source: Source) -> Image.Image:
    """The photograph as a PIL image: mode "L" for greyscale sources (converted to RGB last), else "RGB"."""
    pixels = source.load()
    return Image.fromarray(pixels).convert("L" if pixels.ndim == 2 else "RGB")


LICENCE_NOTES = """\
## Licences

Every photograph above is in the public domain, dedicated to it with CC0, described by its package as having no
known copyright restrictions (`coins`, `immunohistochemistry`), or licensed CC BY 2.0, so all of them may be
redistributed inside this project.
The per-image statements are the ones shipped with the packages: the docstrings of `skimage.data` in
scikit-image 0.26 and `sklearn/datasets/images/README.txt` in scikit-learn. Two groups need a closer note:

- **CC BY 2.0** (`flower_*`, `pagoda_*`): redistribution and derivatives need credit to the photographer, a link
  to the licence (<https://creativecommons.org/licenses/by/2.0/>) and a note of changes; the table provides all
  three. The photos are <https://www.flickr.com/photos/vultilion/6056698931/> (dahlia) and
  <https://www.flickr.com/photos/danielbuechele/6061409035/> (pagoda).
- **Grace Hopper portrait** (`portrait_grace_hopper*`): matplotlib's `sample_data/README.txt` states no licence.
  The photograph is an official U.S. Navy portrait, a work of the U.S. federal government and therefore public
  domain in the United States; matplotlib added it as a public-domain replacement for the Lena image
  (matplotlib pull request #1599).

`brick`, `gravel` and `grass` were already processed by scikit-image (cropped, converted to grey and, for the
brick, perspective-corrected) before being shipped; the "derivation" column lists only what this project did.
Deliberately left out: scikit-image's `moon` and `stereo_motorcycle` (Middlebury) photos, because the installed
package states no licence for them; synthetic or non-photographic images (`colorwheel`, `logo`, `horse`, `page`,
`text`, `cell`, `shepp_logan_phantom`); and scikit-image images that need a download (`eagle`, `lily`, `skin`).
"""


def credits_markdown(rows: list[tuple[Original, str]]) -> str:
    lines = [
        "# Credits for the original images",
        "",
        "`tools/make_originals.py` regenerates these files, byte for byte with the pinned package versions, from",
        "images bundled in the installed scikit-image, scikit-learn and matplotlib packages. Derived views are crops",
        "(pixel boxes in the source photograph's own coordinates), mirror images or quarter turns of one photograph.",
        "",
        "| File | Subject | Source | Licence | Derivation |",
        "| --- | --- | --- | --- | --- |",
    ]
    for original, derivation in rows:
        source = SOURCES[original.source]
        lines.append(
            f"| `{original.filename}` | {original.subject} | {source.origin} | {source.licence} | {derivation} |"
        )
    return "\n".join(lines) + "\n\n" + LICENCE_NOTES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=PROJECT_DIR,
                        help="folder that receives images/ and original_filenames.txt (default: the project)")
    args = parser.parse_args()
    images_dir = args.data_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)

    photos = {key: load_photo(source) for key, source in SOURCES.items()}
    rows = []
    for original in ORIGINALS:
        data, derivation = render(original, photos[original.source])
        (images_dir / original.filename).write_bytes(data)
        rows.append((original, derivation))

    (images_dir / "CREDITS.md").write_text(credits_markdown(rows), encoding="utf-8")
    names = sorted(original.filename for original in ORIGINALS)
    (args.data_dir / "original_filenames.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    total = sum((images_dir / name).stat().st_size for name in names)
    print(f"wrote {len(names)} images ({total / 1e6:.1f} MB) to {images_dir}")


if __name__ == "__main__":
    main()
