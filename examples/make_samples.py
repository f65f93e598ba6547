"""Writes the sample digits bundled in lenetx/assets/samples from the MNIST test set: a few digits
as MNIST stores them, and the same digits re-drawn the way a phone photo of paper would show them
(dark ink on a light background, larger, off-centre), which `lenetx predict` must prepare first.

    python examples/make_samples.py --data-root ../shared/data
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from lenetx import data

OUTPUT = Path(__file__).resolve().parent.parent / "lenetx" / "assets" / "samples"
INDICES = [0, 1, 2, 3, 4, 8, 11, 18, 61, 7]  # one test digit of each class 7,2,1,0,4,5,6,3,8,9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    args = parser.parse_args()
    test = data.load("mnist", False, args.data_root, download=False)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for number, index in enumerate(INDICES):
        digit = test.images[index, 0].numpy()
        label = test.classes[test.labels[index]]
        Image.fromarray(digit).save(OUTPUT / f"mnist_{label}.png")
        if number < 3:
            paper = np.full((120, 90), 235, dtype=np.uint8)
            ink = np.asarray(Image.fromarray(255 - digit).resize((70, 70), Image.BICUBIC))
            paper[30:100, 5:75] = np.minimum(paper[30:100, 5:75], ink)
            Image.fromarray(paper).save(OUTPUT / f"paper_{label}.png")


if __name__ == "__main__":
    main()
