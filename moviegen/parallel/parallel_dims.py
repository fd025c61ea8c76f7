"""The one object that knows the layout: dp_replicate x dp_shard x cp x tp == world size.

    dims = ParallelDims.from_config(cfg.parallel, world_size)   # validates, no comms
    dims.validate_model(n_heads=48, ffn_dim=16384)            # heads / FFN vs tp
    dims.validate_buckets([("256px_4s", 8, 32, 32)], patch)   # tokens vs cp x tp
    mesh = dims.build_mesh("cuda")                            # after init_process_group

Every check here is a pure function of the config and the world size, so every rank
raises the same ``LayoutError`` before any process group or collective exists: an
invalid layout fails fast on all ranks instead of hanging in a collective. This module
knows nothing of the model or data classes: callers pass the numbers.

Mesh dimensions (outermost first): ("dp_replicate", "dp_shard", "cp", "tp"), so TP is
the fastest-varying rank index (neighbours on one NVSwitch host), then CP. Flattened:
  "dp"           dp_replicate x dp_shard   which sample a rank sees (data loading)
  "dp_shard_cp"  dp_shard x cp             FSDP shards parameters over these ranks
  "cp_tp"        cp x tp                   the ranks that share one sample's tokens
"""
from __future__ import annotations

from dataclasses import dataclass



class LayoutError(ValueError):
    """The layout does not fit the world size, the model or the data ("parallel.key: why")."""


MESH_DIM_NAMES = ("dp_replicate", "dp_shard", "cp", "tp")
# Activation checkpointing modes (moviegen/parallel/activation_checkpoint.py applies them);
# here, beside the other layout names, so a config reads them without torch.
AC_MODES = ("none", "full", "selective")


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    cp: int
    tp: int
    world_size: int

    # -- construction -------------------------------------------------------
    @classmethod
    def from_config(cls, parallel_cfg, world_size: int) -> "ParallelDims":
        """Resolves dp_shard=-1 ("the rest") and checks the product against world_size."""
        r, s, c, t = (parallel_cfg.dp_replicate, parallel_cfg.dp_shard,
                      parallel_cfg.cp, parallel_cfg.tp)
        for key, v in (("dp_replicate", r), ("cp", c), ("tp", t)):
            if v < 1:
                raise LayoutError(f"parallel.{key}: must be >= 1, got {v}")
        if s == -1:
            fixed = r * c * t
            if world_size % fixed:
                raise LayoutError(
                    f"parallel: dp_replicate={r} x cp={c} x tp={t} = {fixed} does not divide "
                    f"the world size {world_size}, so dp_shard=-1 has no integer value")
            s = world_size // fixed
        elif s < 1:
            raise LayoutError(f"parallel.dp_shard: must be >= 1 or -1, got {s}")
        if r * s * c * t != world_size:
            raise LayoutError(
                f"parallel: dp_replicate={r} x dp_shard={s} x cp={c} x tp={t} = {r * s * c * t} "
                f"!= world size {world_size} (set dp_shard=-1 to take the rest)")
        return cls(r, s, c, t, world_size)

    # -- derived sizes ------------------------------------------------------
    @property
    def dp(self) -> int:
        """Data-parallel degree: how many different batches one step sees."""
        return self.dp_replicate * self.dp_shard

    @property
    def fsdp(self) -> int:
        """Ranks one parameter is sharded over (CP ranks hold distinct tokens, so FSDP
        shards over them too and their gradient reduction sums the CP partial grads)."""
        return self.dp_shard * self.cp

    @property
    def seq_shards(self) -> int:
        """Pieces one sample's token sequence is cut into (CP x TP with sequence parallel)."""
        return self.cp * self.tp

    @property
    def fsdp_enabled(self) -> bool:
        return self.dp_replicate * self.fsdp > 1

    def describe(self) -> str:
        return (f"world {self.world_size} = dp_replicate {self.dp_replicate} x dp_shard "
                f"{self.dp_shard} x cp {self.cp} x tp {self.tp} (data parallel {self.dp}, "
                f"FSDP over {self.fsdp}{' with HSDP replicas' if self.dp_replicate > 1 else ''}, "
                f"sequence split {self.seq_shards} ways)")

    # -- checks against the model and data ---------------------------------
    def validate_model(self, n_heads: int, ffn_dim: int) -> None:
        """TP shards heads and the FFN width; both must split evenly."""
        if n_heads % self.tp:
            raise LayoutError(f"parallel.tp: tp={self.tp} does not divide the model's "
                              f"{n_heads} attention heads")
        if ffn_dim % self.tp:
            raise LayoutError(f"parallel.tp: tp={self.tp} does not divide the FFN width "
                              f"{ffn_dim}")

    def validate_buckets(self, buckets, patch_size) -> None:
        """Each bucket (name, T', H', W') in latents must give a token count that cp x tp
        divides (every rank of a sequence group holds the same number of tokens)."""
        pt, ph, pw = patch_size
        for name, T, H, W in buckets:
            if T % pt or H % ph or W % pw:
                raise LayoutError(f"data bucket '{name}': latent shape T'={T}, H'={H}, W'={W} "
                                  f"is not divisible by the patch size {tuple(patch_size)}")
            tokens = (T // pt) * (H // ph) * (W // pw)
            if tokens % self.seq_shards:
                raise LayoutError(
                    f"data bucket '{name}': latent T'={T} x H'={H} x W'={W} gives {tokens} "
                    f"tokens, not divisible by cp x tp = {self.cp} x {self.tp} = "
                    f"{self.seq_shards} (choose a layout whose cp x tp divides {tokens})")

    # -- meshes ---------------------------------------------------------------
    def build_mesh(self, device_type: str):
        """The 4D named mesh plus the flattened dims (needs an initialised process group)."""
        from torch.distributed.device_mesh import init_device_mesh

        shape = (self.dp_replicate, self.dp_shard, self.cp, self.tp)
        mesh = init_device_mesh(device_type, shape, mesh_dim_names=MESH_DIM_NAMES)
        flat = {"dp": mesh["dp_replicate", "dp_shard"]._flatten("dp"),
                "dp_shard_cp": mesh["dp_shard", "cp"]._flatten("dp_shard_cp"),
                "cp_tp": mesh["cp", "tp"]._flatten("cp_tp")}
        return NamedMeshes(mesh, flat)


class NamedMeshes:
    """``meshes["tp"]``, ``meshes["dp_shard_cp"]``, ``meshes["dp_replicate", "dp_shard_cp"]``:
    the root mesh's dims plus the flattened ones (kept here, as torch asks callers to
    book-keep flattened meshes rather than slice them from the root)."""

    def __init__(self, root, flattened: dict):
        self.root, self.flattened = root, flattened

    def __getitem__(self, name):
        if isinstance(name, str) and name in self.flattened:
            return self.flattened[name]
        if name == ("dp_replicate", "dp_shard_cp"):  # the HSDP mesh (2D)
            return self._hsdp()
        return self.root[name]

    def _hsdp(self):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return self.root["dp_replicate", "dp_shard_cp"]

    def __repr__(self):
        return f"NamedMeshes({self.root})"
