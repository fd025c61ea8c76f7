"""The demo's data set, drawn from the synthetic vocabulary (moviegen.data.synthetic):
four colours, two shapes, and one colour/direction pairing never in training, in any
shape; the held-out caption and three seen ones are what the demo samples."""
from __future__ import annotations

DEMO_COLORS = ("red", "green", "blue", "yellow")
DEMO_SHAPES = ("circle", "square")
HELD_OUT_PAIRING = ("red", "from right to left")
HELD_OUT_PROMPT = f"a {HELD_OUT_PAIRING[0]} circle moves {HELD_OUT_PAIRING[1]}"
# the held-out caption, then three seen ones
SAMPLE_PROMPTS = (HELD_OUT_PROMPT, "a red circle moves from left to right",
                  "a blue square moves from right to left",
                  "a green circle moves from top to bottom")
