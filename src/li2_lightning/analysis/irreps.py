"""Irreducible representations of a finite group, computed numerically from its Cayley table.

Li2 measures features in the irrep decomposition of the regular representation (docs/theory.md §4-§6,
paper Eq. 20, Theorems 2 and 7). This module turns a Cayley table ``table[a, b] = index of a·b``
into

- :func:`irreps`: the complex irreps rho_k (unitary, rho_k[a] @ rho_k[b] == rho_k[table[a, b]]),
  their characters and Frobenius–Schur types, trivial irrep first;
- :func:`real_blocks`: an orthonormal real basis Q of R^M cut into one block per *real*
  irreducible class (a real-type or quaternionic irrep, or a complex-conjugate pair merged), the
  basis the real-valued weights W are measured in;
- :func:`fourier_blocks`: the same for Z_M, built directly from cos/sin (frequency k = block k);
- :func:`block_projectors`: the per-block orthogonal projectors Q_b Q_bᵀ.

Conventions. Vectors u in R^M / C^M are functions on the group, u[h] the value at element h.
The left regular representation is L(g) e_h = e_{g·h}, the right one R(g) e_h = e_{h·g⁻¹}. Each
isotypic component is a two-sided ideal, so every block is invariant under both. For Z_M with
index = residue, ``irreps(table)[k]`` has character chi_k(m) = exp(2πi·k·m/M), k = 0..M-1.

Method (float64/complex128 throughout). The isotypic components are the eigenspaces of random
Hermitian elements of the centre of the group algebra (combinations of conjugacy-class sums);
clusters that two irreps share by chance are split again with a fresh element until there are as
many components as conjugacy classes. One copy of irrep k is then cut out of its d_k²-dimensional
component with a random Hermitian element of the commutant (the right regular action), and
rho_k(g) = Uᴴ L(g) U. All random draws use fixed seeds, so results are deterministic. The cost is
one M x M Hermitian eigendecomposition plus O(M² Σ d_k) work; results are cached per table
(keyed on the table's bytes), so callbacks may call these every epoch. Cached tensors are shared:
treat them as read-only.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Irrep",
    "RealIrrepBasis",
    "irreps",
    "real_blocks",
    "fourier_blocks",
    "block_projectors",
    "is_cyclic_table",
]

_TYPES = {1: "real", 0: "complex", -1: "quaternionic"}
_SPLIT_GAP = 1e-3  # eigenvalue gap (relative) that separates two components in one split
_MAX_ROUNDS = 30  # random splitting rounds before giving up (two or three suffice in practice)
_CHECK_PAIRS = 4096  # (a, b) pairs on which the homomorphism property is re-checked


@dataclass(frozen=True, eq=False)
class Irrep:
    """One complex irreducible representation rho of a group of order M.

    Attributes:
        dim: Complex dimension d.
        rho: (M, d, d) complex128, unitary matrices with rho[a] @ rho[b] == rho[table[a, b]].
        character: (M,) complex128, chi(g) = tr rho(g).
        indicator: Frobenius–Schur indicator (1/M) Σ_g chi(g²): 1, 0 or -1.
        conjugate: Index (in the list returned by :func:`irreps`) of the irrep with character
            conj(chi); equals this irrep's own index unless its type is "complex".
    """

    dim: int
    rho: Tensor
    character: Tensor
    indicator: int
    conjugate: int

    @property
    def type(self) -> str:
        """"real" (indicator 1), "complex" (0) or "quaternionic" (-1)."""
        return _TYPES[self.indicator]


@dataclass(frozen=True, eq=False)
class RealIrrepBasis:
    """Orthonormal real basis of R^M grouped by real irreducible class (see :func:`real_blocks`).

    Attributes:
        Q: (M, M) float64 orthogonal matrix; the columns of block b are ``Q[:, block_slices[b]]``.
        block_index: (M,) int64, ``block_index[j]`` = block of column j (non-decreasing).
        block_slices: One column slice per block.
        labels: One label per block ("k=3" for Z_M, "trivial", "dim2#1", ... otherwise).
        dims: Complex dimension d_k of the irrep(s) in each block.
        types: "real", "complex" (a conjugate pair merged) or "quaternionic", per block.
        irrep_ids: Indices into :func:`irreps` of the irrep(s) merged into each block.
    """

    Q: Tensor
    block_index: Tensor
    block_slices: tuple[slice, ...]
    labels: tuple[str, ...]
    dims: tuple[int, ...]
    types: tuple[str, ...]
    irrep_ids: tuple[tuple[int, ...], ...]

    @property
    def n_blocks(self) -> int:
        """Number of blocks B (block 0 is the trivial irrep)."""
        return len(self.block_slices)

    @property
    def M(self) -> int:
        """Group order M."""
        return int(self.Q.shape[0])

    @property
    def sizes(self) -> tuple[int, ...]:
        """Real dimension of each block: d² (real, quaternionic) or 2d² (conjugate pair)."""
        return tuple(s.stop - s.start for s in self.block_slices)


# --- public API ---------------------------------------------------------------------------------


def irreps(table: Tensor) -> list[Irrep]:
    """Complex irreducible representations of the group with Cayley table ``table``.

    Ordered by dimension, then by the character values taken element by element (argument in
    [0, 2π), then modulus), so the trivial irrep comes first and, for Z_M with index = residue,
    irrep k has chi_k(m) = exp(2πi·k·m/M). Computed in complex128; cached per table.

    Args:
        table: (M, M) integer tensor, ``table[a, b]`` = index of a·b.

    Returns:
        One :class:`Irrep` per conjugacy class; Σ_k d_k² = M.

    Raises:
        ValueError: If ``table`` is not the Cayley table of a group (not square, entries outside
            0..M-1, a row or column that is not a permutation, or no identity).
        RuntimeError: If the numerical decomposition fails its own checks (should not happen).
    """
    key, M = _table_key(table)
    return list(_decompose(key, M)[0])


def real_blocks(table: Tensor) -> RealIrrepBasis:
    """Real isotypic decomposition of R^M in which real weight vectors are measured.

    Blocks, one per real irreducible class, in the order of their first irrep in :func:`irreps`
    (block 0 = trivial): a real-type irrep of dimension d gives d² columns, a quaternionic one d²
    columns, a complex-conjugate pair 2d² columns. Each block spans a two-sided ideal of the group
    algebra, so it is invariant under left and right translations.

    A cyclic table (``table[a, b] == (a + b) % M``) returns :func:`fourier_blocks`, blocks
    k = 0..⌊M/2⌋ labelled "k=…". Other groups are labelled "trivial", then "dim{d}#{j}" counting
    blocks of each dimension d from 1 in block order (for Z_m × Z_n: the characters merged with
    their conjugates, "dim1#1", "dim1#2", ...; see ``irrep_ids`` and :func:`irreps` for which).
    Within a block the basis is an arbitrary orthonormal one; only its span (projector) is
    meaningful. Computed in float64; cached per table.

    Args:
        table: (M, M) integer tensor, ``table[a, b]`` = index of a·b.

    Returns:
        The :class:`RealIrrepBasis`.

    Raises:
        ValueError: If ``table`` is not the Cayley table of a group.
    """
    key, M = _table_key(table)
    return _real_blocks(key, M)


@functools.lru_cache(maxsize=64)
def fourier_blocks(M: int) -> RealIrrepBasis:
    """Real Fourier basis of Z_M, one block per frequency k = 0..⌊M/2⌋.

    Block k is spanned exactly by sqrt(2/M)·cos(2πkm/M) and sqrt(2/M)·sin(2πkm/M) (columns in that
    order); block 0 and, for even M, block M/2 hold only the cosine, normalized by 1/sqrt(M).
    Labels "k=0", "k=1", ...; ``irrep_ids[k] = (k, M-k)`` matches :func:`irreps` on Z_M.

    Args:
        M: Group order, M >= 1.

    Returns:
        The :class:`RealIrrepBasis` of Z_M (float64).

    Raises:
        ValueError: If M is not a positive integer.
    """
    if isinstance(M, bool) or not isinstance(M, int) or M < 1:
        raise ValueError(f"M={M!r} is not a valid group order; expected an integer >= 1")
    m = torch.arange(M, dtype=torch.float64)
    cols, block_index, labels, ids = [], [], [], []
    for k in range(M // 2 + 1):
        angle = 2 * math.pi * k * m / M
        if k == 0 or 2 * k == M:
            cols.append(torch.cos(angle) / math.sqrt(M))
            block_index.append(k)
            ids.append((k,))
        else:
            scale = math.sqrt(2.0 / M)
            cols += [torch.cos(angle) * scale, torch.sin(angle) * scale]
            block_index += [k, k]
            ids.append((k, M - k))
        labels.append(f"k={k}")
    Q = torch.stack(cols, dim=1)  # (M, M)
    index = torch.tensor(block_index, dtype=torch.long)
    dims = tuple(1 for _ in labels)
    types = tuple("real" if len(i) == 1 else "complex" for i in ids)
    return RealIrrepBasis(Q, index, _slices(index), tuple(labels), dims, types, tuple(ids))


def block_projectors(basis: RealIrrepBasis) -> Tensor:
    """Orthogonal projector onto each block: P_b = Q_b Q_bᵀ.

    The projectors sum to the identity; ``P[b] @ u`` is the part of u in block b. For a stack of
    vectors x of shape (M, ...), the power per block is ``(P[b] @ x).pow(2).sum(0)``, or more
    cheaply ``features.block_power(x, basis)``.

    Args:
        basis: A :class:`RealIrrepBasis` of a group of order M.

    Returns:
        (B, M, M) float64 tensor, one projector per block.
    """
    Q = basis.Q
    return torch.stack([Q[:, s] @ Q[:, s].T for s in basis.block_slices])


def is_cyclic_table(table: Tensor) -> bool:
    """Whether ``table[a, b] == (a + b) % M``, i.e. Z_M with index = residue.

    Args:
        table: (M, M) integer tensor.

    Returns:
        True for the standard table of Z_M.
    """
    t = torch.as_tensor(table)
    if t.dim() != 2 or t.shape[0] != t.shape[1]:
        return False
    M = t.shape[0]
    r = torch.arange(M, device=t.device)
    return bool(torch.equal(t.to(torch.long), (r[:, None] + r[None, :]) % M))


# --- table handling -----------------------------------------------------------------------------


def _table_key(table: Tensor) -> tuple[bytes, int]:
    """Validate a Cayley table and return (bytes key for the caches, M)."""
    try:
        t = torch.as_tensor(table)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"table must be an (M, M) integer tensor ({err})") from err
    if t.dim() != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 1:
        raise ValueError(f"table has shape {tuple(t.shape)}; expected a square (M, M) Cayley table")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"table has dtype {t.dtype}; expected integer element indices 0..M-1")
    t = t.detach().to(device="cpu", dtype=torch.long).contiguous()
    M = t.shape[0]
    if bool(((t < 0) | (t >= M)).any()):
        raise ValueError(f"table has entries outside 0..{M - 1}; expected element indices")
    r = torch.arange(M)
    rows_ok = bool((t.sort(dim=1).values == r).all())
    cols_ok = bool((t.sort(dim=0).values == r[:, None]).all())
    if not (rows_ok and cols_ok):
        raise ValueError("table is not a group's Cayley table: a row or column is not a "
                         "permutation of 0..M-1 (build tables with li2_lightning.groups.make_group)")
    if _identity(t) is None:
        raise ValueError("table is not a group's Cayley table: it has no identity element")
    return t.numpy().tobytes(), M


def _identity(t: Tensor) -> int | None:
    r = torch.arange(t.shape[0])
    hits = ((t == r).all(1) & (t.T == r).all(1)).nonzero()
    return int(hits[0, 0]) if len(hits) else None


def _from_key(key: bytes, M: int) -> Tensor:
    return torch.frombuffer(bytearray(key), dtype=torch.long).reshape(M, M)


def _slices(block_index: Tensor) -> tuple[slice, ...]:
    counts = torch.bincount(block_index).tolist()
    starts = [0] + list(torch.tensor(counts).cumsum(0).tolist())
    return tuple(slice(a, b) for a, b in zip(starts[:-1], starts[1:]))


# --- numerical decomposition --------------------------------------------------------------------


def _group_operator(table: Tensor, coeff: Tensor, right: bool, inv: Tensor) -> Tensor:
    """Σ_g coeff[g] L(g) (or R(g)) as an (M, M) complex matrix, made Hermitian by adding ᴴ."""
    M = table.shape[0]
    h = torch.arange(M).repeat(M)  # column e_h, g-major
    c = coeff.repeat_interleave(M)
    rows = table[h, inv.repeat_interleave(M)] if right else table.reshape(-1)  # h·g⁻¹ or g·h
    A = torch.zeros(M, M, dtype=torch.complex128)
    A.index_put_((rows, h), c, accumulate=True)
    return A + A.mH


def _split(blocks: list[Tensor], draw, done) -> list[Tensor]:
    """Split orthonormal subspaces along eigenvalue gaps of random Hermitian operators.

    Each subspace S (M, n) is replaced by the eigenspaces of Sᴴ A S grouped at gaps larger than
    _SPLIT_GAP times the operator's scale; an invariant subspace on which A is scalar never
    splits. Repeats with fresh operators until ``done(blocks)``.
    """
    for attempt in range(_MAX_ROUNDS):
        if done(blocks):
            return blocks
        A = draw(attempt)
        eigs = [torch.linalg.eigh(S.mH @ A @ S) for S in blocks]
        scale = max(float(mu.abs().max()) for mu, _ in eigs) + 1e-300
        new = []
        for S, (mu, E) in zip(blocks, eigs):
            cuts = ((mu[1:] - mu[:-1]) > _SPLIT_GAP * scale).nonzero().flatten() + 1
            bounds = [0] + cuts.tolist() + [len(mu)]
            new += [S @ E[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        blocks = new
    if done(blocks):
        return blocks
    raise RuntimeError("irreps: random splitting did not separate the representation; "
                       "is the table a group's?")


def _complex_normal(n: int, gen: torch.Generator) -> Tensor:
    z = torch.randn(n, 2, dtype=torch.float64, generator=gen)
    return torch.complex(z[:, 0], z[:, 1])


def _sort_key(chi: Tensor, dim: int, e: int) -> tuple:
    ang = torch.remainder(torch.angle(chi), 2 * math.pi)
    mod = chi.abs()
    ang = torch.where(mod < 1e-9, torch.zeros_like(ang), ang)
    ang = torch.where(ang > 2 * math.pi - 1e-7, torch.zeros_like(ang), ang)
    key = torch.stack([ang, mod], dim=1).round(decimals=6).tolist()
    del key[e]
    return (dim, tuple(map(tuple, key)))


@functools.lru_cache(maxsize=16)
def _decompose(key: bytes, M: int) -> tuple[tuple[Irrep, ...], tuple[Tensor, ...]]:
    """Irreps (sorted) and the orthonormal complex basis (M, d²) of each isotypic component."""
    table = _from_key(key, M)
    e = _identity(table)
    inv = (table == e).to(torch.long).argmax(dim=1)  # row a holds e at column a⁻¹

    # conjugacy classes: class id = smallest index among the conjugates g·x·g⁻¹
    conj = table[table, inv[:, None].expand(M, M)]  # [g, x] = g·x·g⁻¹
    cls = conj.min(dim=0).values
    reps, class_of = torch.unique(cls, return_inverse=True)
    n_classes = len(reps)
    class_size = torch.bincount(class_of).to(torch.float64)

    gen = torch.Generator().manual_seed(12345)

    def draw_central(_: int) -> Tensor:
        alpha = _complex_normal(n_classes, gen) / class_size  # ~ unit eigenvalue scale
        return _group_operator(table, alpha[class_of], right=False, inv=inv)

    eye = torch.eye(M, dtype=torch.complex128)
    comps = _split([eye], draw_central, lambda bl: len(bl) == n_classes)
    sizes = [S.shape[1] for S in comps]
    dims = [math.isqrt(n) for n in sizes]
    if any(d * d != n for d, n in zip(dims, sizes)):
        raise RuntimeError(f"irreps: isotypic components of sizes {sizes} are not squares")

    def draw_commutant(_: int) -> Tensor:
        return _group_operator(table, _complex_normal(M, gen), right=True, inv=inv)

    found = []
    for S, d in zip(comps, dims):
        if d == 1:
            U = S
            chi = U[e, 0] / U[:, 0]  # L(g)u = chi(g)u and (L(g)u)[g] = u[e]
            rho = chi.reshape(M, 1, 1)
        else:
            parts = _split([S], draw_commutant, lambda bl, d=d: any(P.shape[1] == d for P in bl))
            U = next(P for P in parts if P.shape[1] == d)
            # rho(g)_ij = Σ_h conj(U[g·h, i]) U[h, j]
            rho = torch.einsum("ghi,hj->gij", U[table].conj(), U)
            chi = rho.diagonal(dim1=1, dim2=2).sum(-1)
        found.append((d, rho, chi, S))

    found.sort(key=lambda f: _sort_key(f[2], f[0], e))
    chars = torch.stack([f[2] for f in found])  # (n_irreps, M)
    squares = table.diagonal()  # g·g
    out = []
    for i, (d, rho, chi, _) in enumerate(found):
        nu = round(float((chi[squares].sum() / M).real))
        match = (chars - chi.conj()).abs().amax(dim=1)
        out.append(Irrep(d, rho, chi, nu, int(match.argmin())))

    _check(table, out, M)
    return tuple(out), tuple(f[3] for f in found)


def _check(table: Tensor, reps: list[Irrep], M: int) -> None:
    """Re-check Σ d² = M, unitarity and rho[a] rho[b] = rho[ab] on a sample of pairs."""
    if sum(r.dim**2 for r in reps) != M:
        raise RuntimeError("irreps: dimensions do not satisfy Σ d_k² = M")
    gen = torch.Generator().manual_seed(0)
    n = min(M * M, _CHECK_PAIRS)
    pairs = torch.randperm(M * M, generator=gen)[:n]
    a, b = pairs // M, pairs % M
    for d in sorted({r.dim for r in reps}):
        rho = torch.stack([r.rho for r in reps if r.dim == d])  # (n, M, d, d)
        err = (rho[:, a] @ rho[:, b] - rho[:, table[a, b]]).abs().max()
        err_u = (rho @ rho.mH - torch.eye(d, dtype=torch.complex128)).abs().max()
        if float(err) > 1e-8 or float(err_u) > 1e-8:
            raise RuntimeError(f"irreps: numerical check failed (homomorphism error "
                               f"{float(err):.1e}, unitarity error {float(err_u):.1e})")
    if any(r.conjugate == k and r.indicator == 0 for k, r in enumerate(reps)):
        raise RuntimeError("irreps: a complex-type irrep without a conjugate partner")


@functools.lru_cache(maxsize=16)
def _real_blocks(key: bytes, M: int) -> RealIrrepBasis:
    table = _from_key(key, M)
    if is_cyclic_table(table):
        return fourier_blocks(M)
    reps, comps = _decompose(key, M)
    e = _identity(table)
    inv = (table == e).to(torch.long).argmax(dim=1)
    x_hinv = table[:, inv]  # [x, h] = x·h⁻¹

    cols, block_index, labels, dims, types, ids = [], [], [], [], [], []
    seen: set[int] = set()
    count: dict[int, int] = {}
    for k, r in enumerate(reps):
        if k in seen:
            continue
        members = (k,) if r.conjugate == k else (k, r.conjugate)
        seen.update(members)
        # real projector onto the class, Σ_members (d/M) Σ_g conj(chi(g)) L(g): entry [x, h]
        # is the coefficient at g = x·h⁻¹
        c = sum(reps[j].dim / M * reps[j].character.conj() for j in members).real
        P = c[x_hinv]  # (M, M)
        S = torch.cat([comps[j] for j in members], dim=1)
        X = P @ torch.cat([S.real, S.imag], dim=1)  # exactly in range(P) up to rounding
        n = sum(comps[j].shape[1] for j in members)
        U, _, _ = torch.linalg.svd(X, full_matrices=False)
        cols.append(U[:, :n])
        b = len(labels)
        block_index += [b] * n
        if b == 0:
            labels.append("trivial")
        else:
            count[r.dim] = count.get(r.dim, 0) + 1
            labels.append(f"dim{r.dim}#{count[r.dim]}")
        dims.append(r.dim)
        types.append(r.type)
        ids.append(members)
    Q = torch.cat(cols, dim=1)
    index = torch.tensor(block_index, dtype=torch.long)
    return RealIrrepBasis(Q, index, _slices(index), tuple(labels), tuple(dims), tuple(types),
                          tuple(ids))
