"""The datasets' specifications, in one place: what each published dataset holds (its split sizes)
and which file, pinned by its sha256, it comes in. music.py reads the files, fetch.py downloads
them; both take their facts from here."""
from dataclasses import dataclass

from ..errors import UserError


@dataclass(frozen=True)
class MusicSpec:
    name: str
    title: str
    mat_file: str                  # the MATLAB conversion (what fetch.py downloads)
    pickle_file: str               # the original ICML 2012 distribution
    sizes: tuple[int, int, int]    # published sequence counts: train, valid, test
    sha256: str                    # of mat_file, as published by its source


MUSIC = {s.name: s for s in (
    MusicSpec("jsb", "JSB Chorales", "JSB_Chorales.mat", "JSB Chorales.pickle", (229, 76, 77),
              "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4"),
    MusicSpec("nottingham", "Nottingham", "Nottingham.mat", "Nottingham.pickle", (694, 173, 170),
              "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea"),
    MusicSpec("musedata", "MuseData", "MuseData.mat", "MuseData.pickle", (524, 135, 124),
              "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff"),
    MusicSpec("pianomidi", "Piano-midi.de", "Piano_midi.mat", "Piano-midi.de.pickle", (87, 12, 25),
              "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34"),
)}


def music_spec(name: str) -> MusicSpec:
    if name not in MUSIC:
        raise UserError(f"unknown music dataset {name!r}; expected one of {', '.join(MUSIC)}")
    return MUSIC[name]
