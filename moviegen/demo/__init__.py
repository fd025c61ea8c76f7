"""The embedded default: the tiny end-to-end demo on a CPU (``python -m moviegen.demo``).

scene.py        the demo's data set: its colours and shapes, the colour/direction pairing
                held out of training and the captions it samples
pipeline.py     the seven stages, from writing video files to judged samples and plots
conditioned.py  stage 6: image-to-video and extension of a clip of the held-out caption
                (on its own: ``python -m moviegen.demo.conditioned``)
judge.py        what a generated video shows: the shape's colour, motion and outline, and
                the continuity across the joins of an extended video
__main__.py     ``python -m moviegen.demo``
"""
