"""Regenerate the app's 50 original images: distinct photographs shipped in Debian and Python packages.

Writes `images/*.jpg`, `images/CREDITS.md` and `original_filenames.txt` under the project folder (or
`--data-dir`), all from the PHOTOS table. Each photograph is used whole, once: no crops or mirror images, so no
two originals are near-duplicates of each other. The source files are checked against the SHA-256 recorded
for the package version named in the table, so the output is the same byte for byte with the pinned Pillow.

Sources:
- Python packages from requirements-dev.txt: scikit-image, scikit-learn, matplotlib (installed in the venv).
- Debian packages (bookworm): lomiri-wallpapers-16.04, lomiri-wallpapers-20.04, mate-backgrounds,
  plasma-workspace-wallpapers. `--download` fetches the pinned versions with `apt-get download` and unpacks
  them with `dpkg -x` in a temporary folder (nothing is installed); otherwise they are read from
  `--debian-root`, by default `/` (the installed packages).

    .venv/bin/python tools/make_originals.py --download
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

PROJECT_DIR = Path(__file__).resolve().parent.parent
MAX_SIDE = 1024
JPEG_QUALITY = 85


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    debian: bool             # a Debian package read under the Debian root, else an installed Python distribution
    licence_statement: str   # where the package states each photograph's author and licence

    def locate(self, member: str, debian_root: Path) -> Path:
        if self.debian:
            return debian_root / member
        return Path(importlib.metadata.distribution(self.name).locate_file(member))

    def describe(self) -> str:
        return f"{self.name} {self.version} ({'Debian' if self.debian else 'PyPI'})"


PACKAGES = {package.name: package for package in (
    Package("scikit-image", "0.26.0", False, "the docstrings of `skimage.data`"),
    Package("scikit-learn", "1.9.1", False, "`sklearn/datasets/images/README.txt`"),
    Package("matplotlib", "3.11.2", False, "no per-file notice (see the note on the Grace Hopper portrait)"),
    Package("lomiri-wallpapers-16.04", "20.04.0-2", True, "`/usr/share/doc/lomiri-wallpapers-16.04/copyright`"),
    Package("lomiri-wallpapers-20.04", "20.04.0-2", True, "`/usr/share/doc/lomiri-wallpapers-20.04/copyright`"),
    Package("mate-backgrounds", "1.26.0-1", True, "`/usr/share/doc/mate-backgrounds/copyright`"),
    Package("plasma-workspace-wallpapers", "4:5.27.5-2", True,
            "each wallpaper's `metadata.json` (`Authors`, `License`); `/usr/share/doc/plasma-workspace-wallpapers/"
            "copyright` lists the whole package as GPL-2+"),
)}

LICENCES = {
    "CC0-1.0": "[CC0 1.0](https://creativecommons.org/publicdomain/zero/1.0/)",
    "CC-BY-2.0": "[CC BY 2.0](https://creativecommons.org/licenses/by/2.0/)",
    "CC-BY-4.0": "[CC BY 4.0](https://creativecommons.org/licenses/by/4.0/)",
    "CC-BY-SA-3.0": "[CC BY-SA 3.0](https://creativecommons.org/licenses/by-sa/3.0/)",
    "CC-BY-SA-4.0": "[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/)",
    "GPL-2+": "[GPL-2.0-or-later](https://www.gnu.org/licenses/old-licenses/gpl-2.0.html)",
    "LGPL-3": "[LGPL-3.0](https://www.gnu.org/licenses/lgpl-3.0.html)",
    "public-domain": "public domain",
    "no-known-restrictions": "no known copyright restrictions",
}

SKIMAGE = "skimage/data/"
BACKGROUNDS = "usr/share/backgrounds/"
MATE = "usr/share/backgrounds/mate/nature/"
PLASMA = "usr/share/wallpapers/{}/contents/images/2560x1600.jpg"


@dataclass(frozen=True)
class Photo:
    filename: str
    subject: str
    package: str
    member: str    # the file's path inside the package
    author: str
    licence: str   # a key of LICENCES
    sha256: str    # of the file in that package version


PHOTOS = (
    # scikit-image, scikit-learn and matplotlib sample photographs.
    Photo("cat_chelsea.jpg", "cat", "scikit-image", SKIMAGE + "chelsea.png", "Stefan van der Walt", "CC0-1.0",
          "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb"),
    Photo("coffee_cup.jpg", "coffee", "scikit-image", SKIMAGE + "coffee.png",
          "Rachel Michetti (courtesy of Pikolo Espresso Bar)", "CC0-1.0",
          "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"),
    Photo("rocket_launch.jpg", "rocket", "scikit-image", SKIMAGE + "rocket.jpg",
          "SpaceX (DSCOVR launch on Falcon 9)", "public-domain",
          "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"),
    Photo("portrait_astronaut_collins.jpg", "portrait", "scikit-image", SKIMAGE + "astronaut.png",
          "NASA (astronaut Eileen Collins)", "public-domain",
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5"),
    Photo("portrait_photographer_with_camera.jpg", "portrait", "scikit-image", SKIMAGE + "camera.png",
          "Lav Varshney", "CC0-1.0", "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a"),
    Photo("galaxies_hubble_deep_field.jpg", "galaxies", "scikit-image", SKIMAGE + "hubble_deep_field.jpg",
          "NASA (Hubble eXtreme Deep Field)", "public-domain",
          "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4"),
    Photo("retina_fundus.jpg", "retina", "scikit-image", SKIMAGE + "retina.jpg", "Mikael Häggström", "CC0-1.0",
          "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"),
    Photo("tissue_micrograph_ihc.jpg", "micrograph", "scikit-image", SKIMAGE + "ihc.png",
          "Center for Microscopy And Molecular Imaging", "no-known-restrictions",
          "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef"),
    Photo("coins_pompeii.jpg", "coins", "scikit-image", SKIMAGE + "coins.png", "Brooklyn Museum collection",
          "no-known-restrictions", "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba"),
    Photo("texture_brick_wall.jpg", "brick wall", "scikit-image", SKIMAGE + "brick.png", "CC0Textures (`Bricks25`)",
          "CC0-1.0", "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf"),
    Photo("flower_dahlia.jpg", "flower", "scikit-learn", "sklearn/datasets/images/flower.jpg",
          "Flickr user vultilion", "CC-BY-2.0", "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    Photo("pagoda_china.jpg", "pagoda", "scikit-learn", "sklearn/datasets/images/china.jpg",
          "Flickr user danielbuechele", "CC-BY-2.0",
          "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    Photo("portrait_grace_hopper.jpg", "portrait", "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "U.S. Navy (Commodore Grace M. Hopper)", "public-domain",
          "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
    # Ubuntu Touch wallpapers.
    Photo("bridge_cables_and_sky.jpg", "bridge", "lomiri-wallpapers-16.04", BACKGROUNDS + "Bridge_by_Sander_Klootwijk.jpg",
          "Sander Klootwijk", "CC-BY-SA-4.0", "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050"),
    Photo("dragonfly_on_twig.jpg", "insect", "lomiri-wallpapers-16.04", BACKGROUNDS + "Dragonfly_by_Bolly.jpg",
          "“Bolly”", "CC-BY-SA-4.0", "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3"),
    Photo("fig_in_red_bowl.jpg", "fruit", "lomiri-wallpapers-16.04", BACKGROUNDS + "Picture_0B_by_freespace.jpg",
          "Trevor “Freespace”", "CC-BY-4.0", "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"),
    Photo("paintbrushes.jpg", "paintbrushes", "lomiri-wallpapers-16.04", BACKGROUNDS + "Picture_1A_by_freespace.jpg",
          "Trevor “Freespace”", "CC-BY-4.0", "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b"),
    Photo("drum_and_wine_bottle.jpg", "interior", "lomiri-wallpapers-16.04", BACKGROUNDS + "Wine_by_Jakkub_Mede.jpg",
          "Jakub Mede", "CC-BY-4.0", "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"),
    Photo("mountains_aitzgorri.jpg", "mountains", "lomiri-wallpapers-16.04",
          BACKGROUNDS + "aitzgorri_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0",
          "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"),
    Photo("bird_figurine_under_lamps.jpg", "lamps", "lomiri-wallpapers-16.04", BACKGROUNDS + "free_by_Peter_Nerlich.jpg",
          "Peter Nerlich", "CC-BY-SA-4.0", "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373"),
    Photo("dogs_at_a_window.jpg", "dog", "lomiri-wallpapers-16.04", BACKGROUNDS + "friends_by_Aitzol_Berasategi.jpg",
          "Aitzol Berasategi", "CC-BY-4.0", "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"),
    Photo("clock_on_the_wall.jpg", "clock", "lomiri-wallpapers-16.04", BACKGROUNDS + "greentock_by_Peter_Nerlich.jpg",
          "Peter Nerlich", "CC-BY-SA-4.0", "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889"),
    Photo("stream_in_a_forest.jpg", "stream", "lomiri-wallpapers-16.04", BACKGROUNDS + "life_by_Aitzol_Berasategi.jpg",
          "Aitzol Berasategi", "CC-BY-4.0", "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"),
    Photo("mountains_picos_de_europa.jpg", "mountains", "lomiri-wallpapers-16.04",
          BACKGROUNDS + "picosdeeuropa_by_Aitzol_Berasategi.jpg", "Aitzol Berasategi", "CC-BY-4.0",
          "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"),
    Photo("dandelion_clocks.jpg", "dandelion", "lomiri-wallpapers-16.04",
          BACKGROUNDS + "seeding_by_Clements_Engelhardt.jpg", "Clemens Engelhardt", "CC0-1.0",
          "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f"),
    Photo("sunset_over_hills.jpg", "sunset", "lomiri-wallpapers-16.04", BACKGROUNDS + "sunset_by_Aitzol_Berasategi.jpg",
          "Aitzol Berasategi", "CC-BY-4.0", "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"),
    Photo("bird_nuthatch.jpg", "bird", "lomiri-wallpapers-20.04", BACKGROUNDS + "Kleiber_by_Lukas_Baubkus.jpg",
          "Lukas Baubkus", "CC-BY-SA-3.0", "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"),
    # MATE desktop backgrounds.
    Photo("water_drop_splash.jpg", "water drop", "mate-backgrounds", MATE + "Aqua.jpg", "Charles Barbin", "GPL-2+",
          "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    Photo("leaf_veins.jpg", "leaf", "mate-backgrounds", MATE + "Blinds.jpg", "Lennart Poettering, Andrea Cimitan",
          "GPL-2+", "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    Photo("dune_grass_by_the_sea.jpg", "grass", "mate-backgrounds", MATE + "Dune.jpg", "Marco Cogoni, Hylke Bons",
          "GPL-2+", "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    Photo("flower_orange_petals.jpg", "flower", "mate-backgrounds", MATE + "FreshFlower.jpg", "Jens Ansorg", "GPL-2+",
          "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    Photo("flower_red_in_a_garden.jpg", "flower", "mate-backgrounds", MATE + "Garden.jpg", "Charles Barbin", "GPL-2+",
          "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    Photo("grass_blades.jpg", "grass", "mate-backgrounds", MATE + "GreenMeadow.jpg",
          "Timothy Schellhase, Lapo Calamandrei", "GPL-2+",
          "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    Photo("ladybird_on_a_stem.jpg", "insect", "mate-backgrounds", MATE + "LadyBird.jpg", "Charles Barbin", "GPL-2+",
          "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    Photo("leaf_with_raindrops.jpg", "leaf", "mate-backgrounds", MATE + "RainDrops.jpg", "“blackcombwhistler07”",
          "GPL-2+", "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    Photo("storm_clouds_over_a_road.jpg", "storm", "mate-backgrounds", MATE + "Storm.jpg", "Sergey Nazarov", "GPL-2+",
          "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    Photo("dandelion_seeds.jpg", "dandelion", "mate-backgrounds", MATE + "TwoWings.jpg", "Charles Barbin, Hylke Bons",
          "GPL-2+", "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    Photo("wood_planks.jpg", "wood", "mate-backgrounds", MATE + "Wood.jpg", "Jean-François Fortin Tam", "GPL-2+",
          "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    Photo("flower_yellow.jpg", "flower", "mate-backgrounds", MATE + "YellowFlower.jpg", "Charles Barbin", "GPL-2+",
          "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
    # KDE Plasma wallpapers.
    Photo("jetty_by_the_water.jpg", "jetty", "plasma-workspace-wallpapers", PLASMA.format("BytheWater"),
          "Maciej Wiklo", "LGPL-3", "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    Photo("jetty_in_fog.jpg", "jetty", "plasma-workspace-wallpapers", PLASMA.format("ColdRipple"),
          "Risto Saukonpää", "LGPL-3", "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    Photo("cups_colourful.jpg", "cups", "plasma-workspace-wallpapers", PLASMA.format("ColorfulCups"),
          "Dmitri Popov", "LGPL-3", "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    Photo("lake_in_blue_mist.jpg", "lake", "plasma-workspace-wallpapers", PLASMA.format("DarkestHour"),
          "Risto Saukonpää", "LGPL-3", "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    Photo("boats_at_sunset.jpg", "boats", "plasma-workspace-wallpapers", PLASMA.format("EveningGlow"),
          "Ian Hex", "LGPL-3", "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    Photo("leaf_autumn_maple.jpg", "leaf", "plasma-workspace-wallpapers", PLASMA.format("FallenLeaf"),
          "Martin Klapetek", "LGPL-3", "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    Photo("architecture_wavy_facade.jpg", "architecture", "plasma-workspace-wallpapers", PLASMA.format("Grey"),
          "Sigi Sagi", "LGPL-3", "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
    Photo("kite_in_the_sky.jpg", "kite", "plasma-workspace-wallpapers", PLASMA.format("Kite"),
          "Risto Saukonpää", "LGPL-3", "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    Photo("moss_with_one_orange_shoot.jpg", "moss", "plasma-workspace-wallpapers", PLASMA.format("OneStandsOut"),
          "Risto Saukonpää", "LGPL-3", "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    Photo("forest_path.jpg", "forest", "plasma-workspace-wallpapers", PLASMA.format("Path"),
          "Risto Saukonpää", "LGPL-3", "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
    Photo("lake_at_dusk.jpg", "lake", "plasma-workspace-wallpapers", PLASMA.format("summer_1am"),
          "Risto Saukonpää", "LGPL-3", "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
)


def source_paths(debian_root: Path) -> dict[str, Path]:
    """Each photo's source file, checked: exits naming what is missing or differs from the pinned version."""
    paths, problems = {}, []
    for photo in PHOTOS:
        package = PACKAGES[photo.package]
        path = package.locate(photo.member, debian_root)
        if not path.is_file():
            problems.append(f"missing {path} from {package.describe()}")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != photo.sha256:
            problems.append(f"{path} is not the file shipped in {package.describe()}")
        paths[photo.filename] = path
    if problems:
        sys.exit("Cannot regenerate the originals:\n  " + "\n  ".join(problems)
                 + "\nInstall the pinned Python packages (requirements-dev.txt) and pass --download (or "
                   "--debian-root DIR with the Debian packages unpacked under DIR).")
    return paths


def render(path: Path) -> tuple[bytes, str]:
    """The JPEG bytes for one photograph and a description of what was changed."""
    with Image.open(path) as source:
        icc_profile = source.info.get("icc_profile")  # kept so colours look the same as in the source
        image = ImageOps.exif_transpose(source)
        notes = []
        if max(image.size) > MAX_SIDE:
            before = "×".join(map(str, image.size))
            image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
            notes.append(f"downscaled from {before} to {image.width}×{image.height}")
        if image.mode == "L":
            notes.append("grey copied to all three RGB channels")
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True, icc_profile=icc_profile)
    notes.append(f"re-encoded as JPEG quality {JPEG_QUALITY}")
    return buffer.getvalue(), "; ".join(notes)


def download_debian_packages(folder: Path) -> Path:
    """`apt-get download` the pinned Debian packages into `folder` and unpack them there; returns the root."""
    wanted = [f"{p.name}={p.version}" for p in PACKAGES.values() if p.debian]
    subprocess.run(["apt-get", "download", *wanted], cwd=folder, check=True)
    root = folder / "root"
    for deb in sorted(folder.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


LICENCE_NOTES = """\
## Licences

Every photograph is in the public domain, dedicated to it with CC0, described by its package as having no known
copyright restrictions, or under a Creative Commons or GNU licence that allows redistribution with changes. Each
author and licence is the one its package states, in:

{statements}

Notes:

- **Attribution** (CC BY, CC BY-SA): the table names each author and licence, and the "Changes" column says
  what was changed. The scikit-learn photos are <https://www.flickr.com/photos/vultilion/6056698931/> (dahlia;
  scikit-learn's README names danielbuechele for it but links to vultilion's photo) and
  <https://www.flickr.com/photos/danielbuechele/6061409035/> (pagoda), both retrieved by Robert Layton.
- **ShareAlike** (CC BY-SA): our downscaled copies are under the same licence as their source photograph.
- **GPL and LGPL** (MATE and Plasma photographs): the full-resolution photograph, the preferred form for
  changing it, is the file named in the table, in that Debian package and its source package;
  `tools/make_originals.py` is how our copy was made from it.
- **Grace Hopper portrait**: matplotlib's `sample_data/README.txt` states no licence. The photograph is an
  official U.S. Navy portrait, a work of the U.S. federal government and therefore public domain in the United
  States; matplotlib added it as a public-domain replacement for the Lena image (matplotlib pull request #1599).
- scikit-image had already processed `brick.png` (perspective-corrected, cropped, converted to grey) before
  shipping it; the "Changes" column lists only what this project did.

Left out: photographs whose package states no licence (scikit-image's `moon` and `stereo_motorcycle`); the
illustrations and renderings in the wallpaper packages (all of `gnome-backgrounds` 43 and `ukui-wallpapers`,
most of `plasma-workspace-wallpapers`, `umang` and `analogpattern` in `lomiri-wallpapers-16.04`, and
`lomiri-wallpapers-20.04` apart from `Kleiber`); and scikit-image's greyscale `gravel` and `grass` textures and
motion-blurred `clock`, since the 50 above are enough and more varied.
"""


def credits_markdown(rows: list[tuple[Photo, str]]) -> str:
    lines = [
        "# Credits for the original images",
        "",
        "`tools/make_originals.py` writes these files from photographs shipped in Debian and Python packages,",
        "byte for byte with the pinned package versions; its docstring says how to run it. Every original is a",
        "different photograph, used whole: the only changes are downscaling and re-encoding.",
        "",
        "| File | Subject | Author | Source (package, file) | Licence | Changes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for photo, changes in rows:
        package = PACKAGES[photo.package]
        lines.append(f"| `{photo.filename}` | {photo.subject} | {photo.author} | {package.describe()}, "
                     f"`{photo.member}` | {LICENCES[photo.licence]} | {changes} |")
    statements = "\n".join(f"- {p.name}: {p.licence_statement}" for p in PACKAGES.values())
    return "\n".join(lines) + "\n\n" + LICENCE_NOTES.format(statements=statements)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=PROJECT_DIR,
                        help="folder that receives images/ and original_filenames.txt (default: the project)")
    parser.add_argument("--debian-root", type=Path, default=Path("/"),
                        help="folder under which the Debian packages are installed or unpacked (default: /)")
    parser.add_argument("--download", action="store_true",
                        help="fetch the pinned Debian packages with apt-get download into a temporary folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="originals-") as scratch:
        debian_root = download_debian_packages(Path(scratch)) if args.download else args.debian_root
        paths = source_paths(debian_root)
        images_dir = args.data_dir / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        rows = []
        for photo in PHOTOS:
            data, changes = render(paths[photo.filename])
            (images_dir / photo.filename).write_bytes(data)
            rows.append((photo, changes))

    (images_dir / "CREDITS.md").write_text(credits_markdown(rows), encoding="utf-8")
    names = sorted(photo.filename for photo in PHOTOS)
    (args.data_dir / "original_filenames.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    total = sum((images_dir / name).stat().st_size for name in names)
    print(f"wrote {len(names)} images ({total / 1e6:.1f} MB) to {images_dir}")


if __name__ == "__main__":
    main()
