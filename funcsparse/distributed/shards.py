"""Where a DTensor's local piece sits in the full tensor, and the groups that split it."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard

from funcsparse._errors import describe

__all__ = ["Shards", "is_sharded", "shards_of"]


def is_sharded(value: object) -> bool:
    """Whether ``value`` is a DTensor (sharded or replicated over a device mesh)."""
    return isinstance(value, DTensor)


@dataclasses.dataclass(frozen=True)
class Shards:
    """One rank's view of a DTensor: its local box in the full tensor.

    Attributes:
        local: this rank's piece (``DTensor.to_local()``), a plain tensor.
        shape: the full tensor's shape.
        offset: where ``local`` starts in the full tensor, per dimension.
        groups: the process groups of the mesh dimensions that split the tensor (a sum over
            all of them, one after the other, is a sum over every piece once).
        mesh: the device mesh.
        placements: the DTensor's placements.
        member: whether this rank is in ``mesh``. A rank outside it holds an empty piece,
            sends nothing and gets an empty mask piece, as DTensor's own operations give a
            rank outside the mesh.
    """

    local: Tensor
    shape: tuple[int, ...]
    offset: tuple[int, ...]
    groups: tuple[dist.ProcessGroup, ...]
    mesh: DeviceMesh
    placements: tuple[Placement, ...]
    member: bool = True

    @property
    def split_dims(self) -> tuple[int, ...]:
        """The tensor dimensions that the mesh splits (sorted, without repeats)."""
        return tuple(sorted({p.dim for p in self.placements if isinstance(p, Shard)}))

    @property
    def numel(self) -> int:
        """Entries of the full tensor."""
        return math.prod(self.shape)

    def global_index(self, start: int, stop: int) -> Tensor:
        """Row-major positions in the full tensor of the local flat positions ``[start, stop)``."""
        local_shape = tuple(self.local.shape)
        position = torch.arange(start, stop, dtype=torch.int64, device=self.local.device)
        if local_shape == self.shape:
            return position
        result = torch.zeros_like(position)
        rest = position
        full_stride = 1
        dims = list(zip(local_shape, self.shape, self.offset, strict=True))
        for size, full, off in reversed(dims):
            coordinate = rest % size if size else rest
            result += (coordinate + off) * full_stride
            rest = rest // size if size else rest
            full_stride *= full
        return result

    def box(self) -> tuple[slice, ...]:
        """The local piece's index in the full tensor: ``full[box()]`` is ``local``."""
        return tuple(
            slice(off, off + size) for off, size in zip(self.offset, self.local.shape, strict=True)
        )

    def wrap(self, local: Tensor) -> DTensor:
        """A DTensor of the full shape whose piece on this rank is ``local``."""
        return DTensor.from_local(
            local,
            self.mesh,
            self.placements,
            run_check=False,
            shape=torch.Size(self.shape),
            stride=_contiguous_stride(self.shape),
        )

    def local_of(self, value: Tensor, *, owner: str, name: str) -> Tensor:
        """This rank's piece of ``value``, data of the full tensor's shape.

        A DTensor must be placed as this tensor is (its piece is taken as is); a plain tensor
        of the full shape is sliced to the local box (a view, nothing is copied).

        Raises:
            ValueError: ``value`` has another shape, or is a DTensor placed otherwise (or
                split otherwise: a piece of another shape, on that rank alone).
        """
        if tuple(value.shape) != self.shape:
            raise ValueError(
                f"{owner}: {name} of shape {tuple(value.shape)} for a tensor of shape "
                f"{self.shape}; {name} must have the tensor's shape"
            )
        if isinstance(value, DTensor):
            if value.device_mesh != self.mesh or tuple(value.placements) != self.placements:
                raise ValueError(
                    f"{owner}: {name} is a DTensor placed {tuple(value.placements)} on "
                    f"{value.device_mesh}, the tensor {self.placements} on {self.mesh}; "
                    f"place {name} as the tensor is (DTensor.redistribute)"
                )
            if not self.member:  # DTensor gives a rank outside the mesh a 1-D empty piece
                return value.to_local().new_empty(self.local.shape)
            local = value.to_local()
            if local.shape != self.local.shape:
                raise ValueError(
                    f"{owner}: {name}'s piece on this rank has shape {tuple(local.shape)}, the "
                    f"tensor's {tuple(self.local.shape)}; {name} must be split as the tensor "
                    f"is (torch.chunk's split: distribute_tensor, not from_local)"
                )
            return local
        return value[self.box()]


def _outside(tensor: DTensor, shape: tuple[int, ...]) -> Shards:
    """The :class:`Shards` of a rank outside ``tensor``'s mesh: the empty piece a rank past
    the last one would hold (size 0 at the end of every dim split over more than one rank;
    where none is, dim 0 emptied), with no groups."""
    mesh = tensor.device_mesh
    split = {
        p.dim for i, p in enumerate(tensor.placements) if isinstance(p, Shard) and mesh.size(i) > 1
    } or ({0} if shape else set())
    sizes = tuple(0 if d in split else size for d, size in enumerate(shape))
    offset = tuple(size if d in split else 0 for d, size in enumerate(shape))
    local = torch.zeros(sizes, dtype=tensor.dtype, device=tensor.to_local().device)
    placements = tuple(tensor.placements)
    return Shards(local, shape, offset, (), mesh, placements, member=False)


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, out = 1, []
    for size in reversed(shape):
        out.append(stride)
        stride *= max(size, 1)
    return tuple(reversed(out))


def shards_of(tensor: DTensor, *, owner: str) -> Shards:
    """The :class:`Shards` of ``tensor`` on this rank.

    Placements: ``Shard(d)`` (even or uneven, as ``torch.chunk`` splits) and ``Replicate()``
    on any mesh; a dimension may be split by several mesh dimensions.

    A rank outside the tensor's mesh gets :class:`Shards` with ``member=False``: the empty
    piece of a rank past the last one, and no groups, so that it runs the same checks as the
    ranks in the mesh (and raises where they raise) but sends nothing; its mask piece is
    empty, as DTensor's own operations give such a rank.

    Raises:
        ValueError: a ``Partial`` (or other) placement, or a strided shard (FSDP2 over
            tensor parallelism), on every rank alike; the message names ``owner``.
    """
    mesh = tensor.device_mesh
    for mesh_dim, placement in enumerate(tensor.placements):
        if not isinstance(placement, Replicate) and type(placement) is not Shard:
            raise ValueError(
                f"{owner}: a DTensor placed {tuple(tensor.placements)} ({placement!r} on mesh "
                f"dimension {mesh_dim}); funcsparse computes masks on Shard(d) and Replicate() "
                f"placements only (redistribute a Partial first)"
            )
    shape = tuple(tensor.shape)
    coordinate = mesh.get_coordinate()
    if coordinate is None:
        return _outside(tensor, shape)
    offset = [0] * len(shape)
    sizes = list(shape)
    groups: list[dist.ProcessGroup] = []
    for mesh_dim, placement in enumerate(tensor.placements):
        if not isinstance(placement, Shard):
            continue
        d = placement.dim
        count, here = mesh.size(mesh_dim), coordinate[mesh_dim]
        chunk = -(-sizes[d] // count) if sizes[d] else 0
        start = min(here * chunk, sizes[d])
        stop = min(start + chunk, sizes[d])
        offset[d] += start
        sizes[d] = stop - start
        groups.append(mesh.get_group(mesh_dim))
    with torch.no_grad():  # a leaf that requires grad: no autograd node for the masks
        local = tensor.to_local()
    if tuple(local.shape) != tuple(sizes):
        raise ValueError(
            f"{owner}: {describe(tensor)}: the local piece has shape {tuple(local.shape)}, "
            f"where torch.chunk's split of {shape} by {tuple(tensor.placements)} gives "
            f"{tuple(sizes)}; funcsparse needs the standard split"
        )
    return Shards(local, shape, tuple(offset), tuple(groups), mesh, tuple(tensor.placements))
