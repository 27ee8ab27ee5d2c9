"""The device mesh and the one table that maps logical axis names to mesh axes (MaxText style).

Model code names logical axes where parameters are created (``param_axes``) and where
activations are constrained (``constrain``); this table alone decides how they shard over the
``data``, ``fsdp`` and ``tensor`` mesh axes.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("positions", None),
    ("queries", None),
    ("layers", None),  # the stacked axis of scanned layers
)


def make_mesh(shape: dict[str, int] | Sequence[int], devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor); a size of −1 takes the remaining devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  if isinstance(shape, dict) and (unknown := sorted(set(shape) - set(MESH_AXES))):
    raise ValueError(f"unknown mesh axes {unknown}; the axes are {MESH_AXES}")
  sizes = [shape.get(a, 1) for a in MESH_AXES] if isinstance(shape, dict) else list(shape)
  if len(sizes) != len(MESH_AXES) or not all(s == -1 or s >= 1 for s in sizes):
    raise ValueError(f"a mesh is {len(MESH_AXES)} sizes {MESH_AXES}, each >= 1 or -1 (the rest), "
                     f"got {sizes}")
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {sizes}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if devices.size % known:
      raise ValueError(f"{devices.size} devices do not divide into mesh {sizes}")
    sizes[sizes.index(-1)] = devices.size // known
  if int(np.prod(sizes)) != devices.size:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {devices.size}")
  # JAX's device layout: along the ICI torus on TPUs (as MaxText does), by id on GPUs, in
  # order elsewhere.
  return Mesh(mesh_utils.create_device_mesh(sizes, list(devices.flat),
                                            allow_split_physical_axes=True), MESH_AXES)


def param_axes(init, names: tuple[str | None, ...]):
  """An initializer that records the logical axis names of the parameter it creates."""
  return nn.with_logical_partitioning(init, names)


def constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  """Sharding constraint on an activation by logical names (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, names)


def devices_along(name: str) -> int:
  """How many devices the current mesh spreads the logical axis ``name`` over, by the rules in
  context (1 outside a mesh): for the few places where the best program depends on it."""
  mesh = jax.sharding.get_abstract_mesh()
  axes = nn.logical_to_mesh_axes((name,))[0]
  if mesh.empty or axes is None:
    return 1
  return int(np.prod([mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes)]))


def logical_shardings(abstract_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """A NamedSharding per leaf of an abstract tree from ``jax.eval_shape`` (parameters, or a
  whole train state): by its logical names where it was created with them, else replicated."""
  def one(x):
    if isinstance(x, nn.LogicallyPartitioned) and not hasattr(x.value, "shape"):
      return x.value  # optax's MaskedNode (a frozen part's empty state) wrapped in a box
    if isinstance(x, nn.LogicallyPartitioned):
      return NamedSharding(mesh, nn.logical_to_mesh_axes(x.names, rules))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree_util.tree_map(one, abstract_tree,
                                is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Batch-major arrays: the first axis over (data, fsdp), the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp"), *([None] * (ndim - 1))))


def hosts_sharing_batch_rows(mesh: Mesh, batch_size: int) -> list[tuple[slice, set[int]]]:
  """The batch rows that devices of more than one host hold (the ``tensor`` axis spanning
  hosts), with those hosts. Every host feeds its own rows (``make_array_from_process_local_data``),
  so such rows would be different data on different devices of one "replicated" shard."""
  holders: dict[tuple[int, int], set[int]] = {}
  for device, index in batch_sharding(mesh, 1).devices_indices_map((batch_size,)).items():
    rows = index[0].indices(batch_size)[:2]
    holders.setdefault(rows, set()).add(getattr(device, "process_index", 0))
  return [(slice(*rows), hosts) for rows, hosts in holders.items() if len(hosts) > 1]
