"""Device meshes and parallelisation plans applied from outside to the plain model."""
