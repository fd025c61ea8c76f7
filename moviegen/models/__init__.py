"""Models: the Movie Gen transformer, the temporal autoencoder (TAE), text encoders.

Plain ``nn.Module``s with ``init_weights()`` (so they can be built on the meta device);
nothing here knows about distribution: ``parallel/`` shards them from outside.
"""
